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
    """(node, root) for every node on an edge; root is the smallest node of its component.

    Alternates large-star and small-star (Kiveris et al., 2014) until every edge points at a root (a node that
    points nowhere), i.e. each component is one star around its minimum.
    """
    current = edges.localCheckpoint()
    for iteration in range(max_iterations):
        current = small_star(large_star(current)).localCheckpoint()
        pointing_at_non_root = current.alias("a").join(
            current.alias("b"), F.col("a.dst") == F.col("b.src"), "left_semi"
        )
        if pointing_at_non_root.isEmpty():
            log(f"dedup: connected components converged after {iteration + 1} iteration(s)")
            return current.select(F.col("src").alias("node"), F.col("dst").alias("root"))
    raise RuntimeError(f"connected components did not converge in {max_iterations} iterations")
