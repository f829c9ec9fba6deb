"""Step 4: connected components of an edge list, as (node, root) with root the smallest node of each component."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as sparse_components

EDGE_SCHEMA = T.StructType([T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())])
# Star edges (after each partition is contracted) up to which one task contracts them all, giving the components at
# once, instead of large-star / small-star rounds (several shuffles each). That task holds ~100 bytes per edge.
ONE_TASK_MAX_EDGES = 8_000_000


def local_stars(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow: a partition's edges replaced by its components as stars, every node linked to the smallest node of
    its component within the partition.

    The union of these stars has the components of the union of the edges, and far fewer edges and rounds: on
    LSH graphs most of a component usually lies in one partition. Memory is that of the partition, whatever the
    size of a component.
    """
    tables = [batch for batch in batches if batch.num_rows]
    if not tables:
        return
    src = np.concatenate([batch.column("src").to_numpy() for batch in tables])
    dst = np.concatenate([batch.column("dst").to_numpy() for batch in tables])
    nodes, index = np.unique(np.concatenate([src, dst]), return_inverse=True)
    adjacency = coo_matrix((np.ones(len(src), dtype=np.int32), (index[: len(src)], index[len(src) :])), shape=(len(nodes),) * 2)
    _, label = sparse_components(adjacency, directed=False)
    # nodes are sorted: the first node carrying a label is its component's smallest.
    _, first = np.unique(label, return_index=True)
    root = nodes[first[label]]
    linked = nodes != root
    yield pa.RecordBatch.from_arrays([pa.array(nodes[linked]), pa.array(root[linked])], names=["src", "dst"])


def large_star(edges: DataFrame) -> DataFrame:
    """Link every larger neighbour of u to the smallest node of u's closed neighbourhood."""
    both = edges.unionByName(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    neighbourhood_min = F.least(F.min("dst").over(Window.partitionBy("src")), F.col("src"))
    linked = both.withColumn("m", neighbourhood_min).filter(F.col("dst") > F.col("src"))
    return linked.select(F.col("dst").alias("src"), F.col("m").alias("dst")).distinct()


def small_star(edges: DataFrame) -> DataFrame:
    """Link u and its smaller neighbours to the smallest of them (edges arrive with src > dst)."""
    smallest = F.min("dst").over(Window.partitionBy("src"))
    with_min = edges.withColumn("m", smallest)
    members = with_min.select(F.col("dst").alias("src"), "m").unionByName(with_min.select("src", "m"))
    return members.filter(F.col("src") != F.col("m")).select("src", F.col("m").alias("dst")).distinct()


def connected_components(
    edges: DataFrame,
    log: Callable[[str], None] = lambda message: None,
    max_iterations: int = 50,
    contract_partitions: bool = True,
    one_task_max_edges: int = ONE_TASK_MAX_EDGES,
) -> DataFrame:
    """(node, root) for every node on an edge (src, dst) of any orientation; root is the smallest node of its
    component.

    First each partition's edges are contracted to stars (`local_stars`, unless contract_partitions is False).
    Up to one_task_max_edges star edges, one task contracts their union: its stars are the components. Above that,
    large-star and small-star (Kiveris et al., 2014), which keep the components unchanged, alternate until the
    edges form stars: each component then is its minimum with every other node pointing at it, and only at it.
    """
    current = edges.select("src", "dst")
    if contract_partitions:
        current = current.mapInArrow(local_stars, EDGE_SCHEMA)
    current = current.localCheckpoint()
    if contract_partitions and current.count() <= one_task_max_edges:
        current = current.coalesce(1).mapInArrow(local_stars, EDGE_SCHEMA).localCheckpoint()
        log("dedup: connected components in one task")
        return current.select(F.col("src").alias("node"), F.col("dst").alias("root"))
    for iteration in range(max_iterations):
        current = small_star(large_star(current)).localCheckpoint()
        if is_star_forest(current):
            log(f"dedup: connected components converged after {iteration + 1} iteration(s)")
            return current.select(F.col("src").alias("node"), F.col("dst").alias("root"))
    raise RuntimeError(f"connected components did not converge in {max_iterations} iterations")


def is_star_forest(edges: DataFrame) -> bool:
    """Whether every node points at most one node and no node that points is pointed at (distinct edges).

    Both are needed: with edges pointing only at roots, a node can still point at two roots (bucket stars {3,4,5},
    {1,4}, {2,5} leave node 3 pointing at 1 and 2 after one round), which would join two clusters' rows to it.
    """
    ends = edges.select(F.col("src").alias("node"), F.lit(1).alias("out"), F.lit(0).alias("in")).unionByName(
        edges.select(F.col("dst").alias("node"), F.lit(0).alias("out"), F.lit(1).alias("in"))
    )
    per_node = ends.groupBy("node").agg(F.sum("out").alias("out"), F.sum("in").alias("in"))
    return per_node.filter("out > 1 OR (out = 1 AND in > 0)").isEmpty()
