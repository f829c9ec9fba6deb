"""Step 5: per cluster, frequency metadata (size, variants, snapshots, domains, first/last seen) and variant ranks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.errors import XgenError

RANK_KEYS = ("quality", "recency", "length")


def rank_sort_keys(rank_by: tuple[str, ...]) -> list[tuple[str, str]]:
    """pyarrow sort keys for the variant order inside a cluster (missing values last), ties broken by id."""
    unknown = set(rank_by) - set(RANK_KEYS)
    if unknown:
        raise XgenError(f"dedup.rank_by has unknown key(s) {sorted(unknown)}; allowed: {list(RANK_KEYS)}")
    keys = {
        "quality": [("quality", "descending", "at_end")],
        "recency": [("crawl_time", "descending", "at_end"), ("snapshot", "descending", "at_end")],
        "length": [("length", "descending", "at_end")],
    }
    return [key for name in rank_by for key in keys[name]] + [("id", "ascending", "at_end")]


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


def cluster_metadata(slim: DataFrame, roots: DataFrame, params: DedupConfig) -> DataFrame:
    """Per (chunk, row): cluster_id, frequency metadata, cluster_rank and kept.

    One exchange brings each cluster's slim rows together; the statistics and ranks of a whole partition are then
    computed at once with Arrow sorts and group-bys (cheaper than Spark's three windows and a distinct-count
    aggregation on a short job).
    """
    rank_sort_keys(params.rank_by)  # unknown keys fail here, on the driver
    clustered = slim.join(roots, "node", "left").withColumn("root", F.coalesce("root", "node"))
    columns = ["chunk", "row", "id", "node", "root", "snapshot", "domain", "crawl_time", "quality", "length"]
    return clustered.select(*columns).repartition("root").mapInArrow(cluster_annotations(params), ANNOTATION_SCHEMA)


def cluster_annotations(params: DedupConfig):
    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [batch for batch in batches if batch.num_rows]
        if batches:
            yield from annotate_clusters(pa.Table.from_batches(batches), params).to_batches()

    return compute


def annotate_clusters(rows: pa.Table, params: DedupConfig) -> pa.Table:
    """Annotations for every row of whole clusters (rows grouped by root)."""
    order = rank_sort_keys(params.rank_by)
    # Exact copies of a text (same node) ranked among themselves first ...
    rows = rows.take(pc.sort_indices(rows, [("root", "ascending", "at_end"), ("node", "ascending", "at_end"), *order]))
    exact_rank, n_exact = ranks_within(rows.column("root"), rows.column("node"))
    rows = rows.append_column("exact_rank", pa.array(exact_rank)).append_column("n_exact", pa.array(n_exact))
    # ... then, inside the cluster, every distinct variant before any exact repeat: repeats add no lexical diversity.
    rows = rows.append_column("repeat", pc.greater(rows.column("exact_rank"), 1))
    rows = rows.take(pc.sort_indices(rows, [("root", "ascending", "at_end"), ("repeat", "ascending", "at_end"), *order]))
    cluster_rank, _ = ranks_within(rows.column("root"))
    kept = (rows.column("exact_rank").to_numpy() == 1) & (cluster_rank <= params.top_k)
    stats = rows.group_by("root").aggregate(
        [
            ("id", "min"), ("root", "count"), ("node", "count_distinct"), ("snapshot", "count_distinct"),
            ("domain", "count_distinct"), ("snapshot", "min"), ("snapshot", "max"), ("crawl_time", "min"),
            ("crawl_time", "max"),
        ]
    )  # fmt: skip
    stats = stats.rename_columns(
        {
            "id_min": "cluster_id", "root_count": "cluster_size", "node_count_distinct": "n_variants",
            "snapshot_count_distinct": "n_snapshots", "domain_count_distinct": "n_domains",
            "snapshot_min": "first_snapshot", "snapshot_max": "last_snapshot", "crawl_time_min": "first_seen",
            "crawl_time_max": "last_seen",
        }
    )  # fmt: skip
    per_row = pa.table(
        {
            "chunk": rows.column("chunk"), "row": rows.column("row"), "root": rows.column("root"),
            "kept": pa.array(kept), "cluster_rank": pa.array(cluster_rank.astype(np.int32)),
            "n_exact": rows.column("n_exact"),
        }
    )  # fmt: skip
    joined = per_row.join(stats, "root")
    return joined.select([field.name for field in ANNOTATION_SCHEMA.fields])


def ranks_within(*keys: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by keys: 1-based rank inside each run of equal keys, and the run's length."""
    n = len(keys[0])
    changes = np.zeros(n, dtype=bool)
    if n:
        changes[0] = True
    for key in keys:
        values = key.to_numpy()
        changes[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(changes)
    lengths = np.diff(np.r_[starts, n])
    run_start = np.repeat(starts, lengths)
    return np.arange(n) - run_start + 1, np.repeat(lengths, lengths).astype(np.int64)
