"""Step 5: per cluster, frequency metadata (size, variants, snapshots, domains, first/last seen) and variant ranks."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.errors import XgenError

RANK_KEYS = ("quality", "recency", "length")


def variant_order(rank_by: list[str]) -> list[Column]:
    """The order of variants inside a cluster (missing values last), ties broken by id (unique here)."""
    unknown = set(rank_by) - set(RANK_KEYS)
    if unknown:
        raise XgenError(f"dedup.rank_by has unknown key(s) {sorted(unknown)}; allowed: {list(RANK_KEYS)}")
    # Spark sorts NaN above every number: a NaN quality counts as missing instead.
    quality = F.when(F.isnan("quality"), None).otherwise(F.col("quality"))
    keys = {
        "quality": [quality.desc_nulls_last()],
        "recency": [F.col("crawl_time").desc_nulls_last(), F.col("snapshot").desc_nulls_last()],
        "length": [F.col("length").desc_nulls_last()],
    }
    return [key for name in rank_by for key in keys[name]] + [F.col("id").asc_nulls_last()]


def cluster_key(smallest_node: Column) -> Column:
    """A cluster's id: its smallest content node as 15 hex digits.

    Content only, never the document ids (which hash the input URI): the same texts give the same clusters, held-out
    split and mixture draws wherever the crawl is stored.
    """
    return F.lpad(F.lower(F.hex(smallest_node)), 15, "0")


ANNOTATION_SCHEMA = T.StructType(
    [T.StructField("chunk", T.IntegerType()), T.StructField("row", T.IntegerType())]
    + [
        T.StructField(name, spark_type)
        for name, spark_type in [
            ("cluster_id", T.StringType()), ("cluster_size", T.LongType()), ("n_snapshots", T.LongType()),
            ("n_domains", T.LongType()), ("kept", T.BooleanType()), ("cluster_rank", T.IntegerType()),
            ("n_variants", T.LongType()), ("n_exact", T.LongType()), ("first_snapshot", T.StringType()),
            ("last_snapshot", T.StringType()), ("first_seen", T.TimestampType()), ("last_seen", T.TimestampType()),
        ]
    ]
)  # fmt: skip


# Rows of roots (two longs each) up to which the join with them broadcasts roots: a hash join with no exchange and
# no sort of the documents. Spark cannot tell the size of a checkpointed frame, so it is counted; above the bound
# (paper scale) the join sorts and merges.
BROADCAST_ROOTS_MAX_ROWS = 8_000_000
WHOLE_GROUP = (Window.unboundedPreceding, Window.unboundedFollowing)
CLUSTER_COLUMNS = ["chunk", "row", "id", "node", "snapshot", "domain", "crawl_time", "quality", "length"]


def rows_by_cluster(documents: DataFrame, roots: DataFrame) -> DataFrame:
    """`documents` (CLUSTER_COLUMNS, and any others) with their cluster's root, in one exchange by root."""
    if roots.count() <= BROADCAST_ROOTS_MAX_ROWS:
        roots = F.broadcast(roots)
    clustered = documents.join(roots, "node", "left").withColumn("root", F.coalesce("root", "node"))
    return clustered.repartition("root")


def cluster_metadata(by_cluster: DataFrame, params: DedupConfig) -> DataFrame:
    """Per (chunk, row) of `by_cluster` (from rows_by_cluster): cluster_id, frequency metadata, cluster_rank, kept.

    Spark's windows only: they sort and spill, so no task ever holds a whole cluster (a page copied 10M times is one
    cluster) in memory, as a Python batch or a collected list would. Every window is partitioned by the cluster
    (and more), so the exchange by root serves them all; distinct counts are sums of first-of-value flags, not
    distinct aggregations (those expand every row once per counted column and exchange twice). Windows that share
    their partitioning and order run as one Window operator (four here, one per sort).
    """
    order = variant_order(params.rank_by)
    flagged = by_cluster.select(*CLUSTER_COLUMNS, "root").withColumns(
        {
            "first_of_snapshot": first_of_value_in_cluster("snapshot"),
            "first_of_domain": first_of_value_in_cluster("domain") & F.col("domain").isNotNull(),
        }
    )
    copies = Window.partitionBy("root", "node").orderBy(*order)
    ranked = flagged.withColumns(
        {"exact_rank": F.row_number().over(copies), "n_exact": F.count("*").over(copies.rowsBetween(*WHOLE_GROUP))}
    )
    # Inside a cluster every distinct variant comes before any exact repeat: repeats add no lexical diversity.
    repeat = F.col("exact_rank") > 1
    variants = Window.partitionBy("root").orderBy(repeat, *order)
    whole_cluster = variants.rowsBetween(*WHOLE_GROUP)
    annotated = ranked.withColumns(
        {
            "cluster_rank": F.row_number().over(variants),
            **{name: aggregate.over(whole_cluster) for name, aggregate in cluster_stats().items()},
        }
    )
    annotated = annotated.withColumns(
        {
            "kept": ~repeat & (F.col("cluster_rank") <= params.top_k),
            "cluster_id": cluster_key(F.col("cluster_id")),
        }
    )
    return annotated.select(*ANNOTATION_SCHEMA.names)


def first_of_value_in_cluster(column: str) -> Column:
    """True on one row of each (cluster, value of `column`): summed, the number of distinct values (null counts once).

    A lag over the cluster in `column` order, not a row number per (cluster, value): one window group per cluster.
    """
    in_value_order = Window.partitionBy("root").orderBy(column)
    previous = F.lag(column).over(in_value_order)
    return (F.row_number().over(in_value_order) == 1) | ~previous.eqNullSafe(F.col(column))


def cluster_stats() -> dict[str, Column]:
    """The per-cluster aggregations, evaluated over the whole cluster's rows (flags from cluster_metadata)."""
    return {
        "cluster_id": F.min("node"),  # made a key below: a window takes only the aggregate itself
        "cluster_size": F.count("*"),
        "n_variants": F.sum((F.col("exact_rank") == 1).cast("long")),
        "n_snapshots": F.sum(F.col("first_of_snapshot").cast("long")),
        "n_domains": F.sum(F.col("first_of_domain").cast("long")),
        "first_snapshot": F.min("snapshot"),
        "last_snapshot": F.max("snapshot"),
        "first_seen": F.min("crawl_time"),
        "last_seen": F.max("crawl_time"),
    }
