"""Step 4: connected components of an edge list, as (node, root) with root the smallest node of each component."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


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
    edges: DataFrame, log: Callable[[str], None] = lambda message: None, max_iterations: int = 50
) -> DataFrame:
    """(node, root) for every node on an edge (src, dst) of any orientation; root is the smallest node of its
    component.

    Alternates large-star and small-star (Kiveris et al., 2014), which keep the components unchanged, until the
    edges form stars: each component then is its minimum with every other node pointing at it, and only at it.
    """
    current = edges.select("src", "dst").localCheckpoint()
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
