"""Step 6: every document written once, in input order, with its cluster annotations or its quarantine reason."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data.dedup.clusters import CLUSTER_COLUMNS, cluster_metadata, rows_by_cluster
from xgen_core.data.dedup.documents import (
    TIMESTAMP, content_digests, content_hash_column, normalised_documents, flag_repeated_ids, with_column,
)  # fmt: skip
from xgen_core.data.doc_chunks import Chunk, conform, part_uri, read_chunk, write_parquet
from xgen_core.data.sparkio import placement_keys
from xgen_core.storage import join, normalize_uri, store_for


OUTPUT_LEADING_COLUMNS = [
    "id", "cluster_id", "cluster_size", "n_snapshots", "n_domains", "kept", "cluster_rank", "n_variants", "n_exact",
    "first_snapshot", "last_snapshot", "first_seen", "last_seen", "content_hash",
    "text", "url", "domain", "snapshot", "crawl_time", "quality",
]  # fmt: skip
ANNOTATION_TYPES = {
    "cluster_id": pa.string(), "cluster_size": pa.int64(), "n_snapshots": pa.int64(), "n_domains": pa.int64(),
    "kept": pa.bool_(), "cluster_rank": pa.int32(), "n_variants": pa.int64(), "n_exact": pa.int64(),
    "first_snapshot": pa.string(), "last_snapshot": pa.string(), "first_seen": TIMESTAMP, "last_seen": TIMESTAMP,
}  # fmt: skip


def output_schemas(input_schema: pa.Schema) -> tuple[pa.Schema, pa.Schema]:
    """(data, quarantine) schemas: leading columns first, then every other input column by name."""
    documents = with_column(normalised_documents(input_schema.empty_table()), "content_hash", pa.array([], pa.string())).schema
    fields = {field.name: field.type for field in documents}
    rest = sorted(name for name in fields if name not in OUTPUT_LEADING_COLUMNS)
    data_fields = {**fields, **ANNOTATION_TYPES}
    data = pa.schema([(name, data_fields[name]) for name in OUTPUT_LEADING_COLUMNS + rest])
    quarantine_names = ["id", "quarantine_reason", "content_hash", "text"]
    quarantine_fields = {**fields, "quarantine_reason": pa.string()}
    rest = sorted(name for name in quarantine_fields if name not in quarantine_names)
    quarantine = pa.schema([(name, quarantine_fields[name]) for name in quarantine_names + rest])
    return data, quarantine


PLACEMENT_COLUMNS = ["chunk", "row", "quarantine_reason", *ANNOTATION_TYPES]
COUNT_SCHEMA = T.StructType([T.StructField("chunk", T.IntegerType()), T.StructField("counts", T.StringType())])


def write_chunks(chunks: list[Chunk], data_uri: str, quarantine_uri: str, schemas: tuple[pa.Schema, pa.Schema]):
    """mapInArrow over a partition's annotations, whole chunks of them: write each chunk's documents and quarantined
    rows. The partition's annotations are sorted by (chunk, row) here, in numpy: a Spark sort of the wide rows
    before the hand-over costs more, and the task holds them all anyway."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [batch for batch in batches if batch.num_rows]
        if not batches:
            return
        annotations = pa.Table.from_batches(batches)
        order = np.lexsort((annotations.column("row").to_numpy(), annotations.column("chunk").to_numpy()))
        annotations = annotations.take(pa.array(order))
        chunk_column = annotations.column("chunk").to_numpy()
        starts = np.flatnonzero(np.r_[True, chunk_column[1:] != chunk_column[:-1]])
        for start, stop in zip(starts, [*starts[1:], len(chunk_column)]):
            chunk = chunks[int(chunk_column[start])]
            counts = write_chunk(chunk, annotations.slice(start, stop - start), data_uri, quarantine_uri, schemas)
            yield pa.RecordBatch.from_arrays(
                [pa.array([chunk.index], pa.int32()), pa.array([json.dumps(counts)])], names=["chunk", "counts"]
            )

    return compute


def write_chunk(chunk: Chunk, annotations: pa.Table, data_uri: str, quarantine_uri: str, schemas) -> dict:
    """Join one chunk's documents with their annotations (one per row, in row order) and write both outputs."""
    docs = normalised_documents(read_chunk(chunk))
    rows = annotations.column("row").to_numpy()
    if len(rows) != len(docs) or not np.array_equal(rows, np.arange(len(docs))):
        raise RuntimeError(f"chunk {chunk.index} ({chunk.uri}): {len(rows)} annotations for {len(docs)} documents")
    docs = with_column(docs, "content_hash", content_hash_column(*content_digests(docs.column("text"))))
    reasons = annotations.column("quarantine_reason")
    quarantined = pc.is_valid(reasons)
    data = docs.filter(pc.invert(quarantined))
    annotated = annotations.filter(pc.invert(quarantined))
    for name in ANNOTATION_TYPES:
        data = data.append_column(name, annotated.column(name))
    write_parquet(conform(data, schemas[0]), part_uri(data_uri, chunk))
    bad = docs.filter(quarantined).append_column("quarantine_reason", reasons.filter(quarantined))
    write_parquet(conform(bad, schemas[1]), part_uri(quarantine_uri, chunk))
    return {
        "documents": len(data),
        "kept": int(pc.sum(annotated.column("kept")).as_py() or 0),
        "clusters": int(pc.sum(pc.equal(annotated.column("cluster_rank"), 1)).as_py() or 0),
        "in_duplicate_clusters": int(pc.sum(pc.greater(annotated.column("cluster_size"), 1)).as_py() or 0),
        "with_exact_copies": int(pc.sum(pc.greater(annotated.column("n_exact"), 1)).as_py() or 0),
        "quarantined": dict(Counter(bad.column("quarantine_reason").to_pylist())),
    }


def write_documents(spark, per_document: DataFrame, roots: DataFrame, chunks: list[Chunk], schemas, output_uri: str, params: DedupConfig) -> dict:
    """data/ and quarantine/, one file per input chunk: every document with its annotations or quarantine reason."""
    hashable = per_document.filter(F.col("quarantine_reason").isNull())
    flagged = flag_repeated_ids(hashable.select(*CLUSTER_COLUMNS, "url"))
    metadata = cluster_metadata(rows_by_cluster(flagged.filter(~F.col("repeats_id")).select(*CLUSTER_COLUMNS), roots), params)
    repeated = flagged.filter("repeats_id").select("chunk", "row", F.lit("duplicate_id").alias("quarantine_reason"))
    bad_rows = per_document.filter(F.col("quarantine_reason").isNotNull()).select("chunk", "row", "quarantine_reason")
    placement = metadata.unionByName(bad_rows.unionByName(repeated), allowMissingColumns=True)
    keys = spark.createDataFrame(list(enumerate(placement_keys(spark, len(chunks)))), "chunk int, partition_key long")
    by_chunk = placement.join(F.broadcast(keys), "chunk").repartition(len(chunks), "partition_key")
    for folder in ("data", "quarantine"):
        store_for(output_uri).delete_prefix(normalize_uri(join(output_uri, folder)))
    writer = write_chunks(chunks, join(output_uri, "data"), join(output_uri, "quarantine"), schemas)
    per_chunk = by_chunk.select(*PLACEMENT_COLUMNS).mapInArrow(writer, COUNT_SCHEMA)
    written = {row.chunk: json.loads(row.counts) for row in per_chunk.collect()}
    for chunk in chunks:
        if chunk.index in written:
            continue
        if chunk.row_count:
            raise RuntimeError(f"chunk {chunk.index} ({chunk.uri}): {chunk.row_count} documents were not written")
        # An empty input chunk still gets its (empty) files: readers of data/ and quarantine/ find them.
        for folder, schema in zip(("data", "quarantine"), schemas):
            write_parquet(schema.empty_table(), part_uri(join(output_uri, folder), chunk))
    return summed_counts(list(written.values()))


def summed_counts(per_chunk: list[dict]) -> dict:
    counts = {key: 0 for key in ("documents", "kept", "clusters", "in_duplicate_clusters", "with_exact_copies")}
    reasons: dict[str, int] = {}
    for chunk in per_chunk:
        for key in counts:
            counts[key] += chunk[key]
        for reason, n in chunk["quarantined"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    counts["not_kept"] = counts["documents"] - counts["kept"]
    counts["quarantined"] = sum(reasons.values())
    counts.update({f"quarantined_{reason}": n for reason, n in sorted(reasons.items())})
    return counts
