"""Exact + fuzzy deduplication that annotates instead of dropping (paper section 2.2).

Flow (nothing but small counts reaches the driver; the texts never enter the JVM):
  input chunks -> Python tasks read their documents, quarantine bad rows, hash the content (exact key) and compute
     MinHash signatures (vectorised per batch; reused from a previous run when a snapshot's texts are unchanged)
  -> Spark over the slim per-document columns: LSH band keys -> star edges to each bucket's smallest member
  -> optional MinHash-estimated Jaccard check of each edge -> connected components (large-star / small-star)
  -> every document joins the component of its content hash (exact copies share one node)
  -> per cluster: size, snapshots, domains, first/last seen; top-k distinct variants kept, the rest flagged
  -> Python tasks write each chunk's documents with their annotations (and its quarantined rows), in input order.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.data import minhash
from xgen_core.data.doc_chunks import (
    Chunk, conform, data_files, input_format, part_uri, plan_chunks, read_chunk, write_parquet,
)  # fmt: skip
from xgen_core.data.sparkio import rename_parts, write_deterministic_parquet
from xgen_core.errors import XgenError
from xgen_core.storage import join, normalize_uri, store_for

# Bump when the shingling or signature layout changes: stored signatures from another version are not reused.
SIGNATURE_VERSION = 1
RANK_KEYS = ("quality", "recency", "length")
BINARY_SHARE_LIMIT = 0.05
TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class DedupParams:
    ngram: int
    num_perm: int
    seed: int
    threshold: float
    top_k: int
    verify_jaccard: bool
    rank_by: tuple[str, ...]
    rows_per_chunk: int
    max_doc_chars: int

    def signature_key(self) -> str:
        return f"v{SIGNATURE_VERSION}-n{self.ngram}-p{self.num_perm}-s{self.seed}"


# ---------------------------------------------------------------------------------------------------------------
# Documents: normalised, checked and hashed in Python, one input chunk per task


def normalised_documents(table: pa.Table) -> pa.Table:
    """Map the accepted input shapes (sample JSONL, ingest Parquet) onto one schema, other columns kept.

    Ingest names the key `doc_id`; plain inputs may lack domain, crawl time or a quality column.
    """
    if "id" not in table.column_names and "doc_id" in table.column_names:
        table = table.rename_columns(["id" if name == "doc_id" else name for name in table.column_names])
    missing = {"id", "text"} - set(table.column_names)
    if missing:
        raise XgenError(f"dedup input lacks column(s) {sorted(missing)}; found {sorted(table.column_names)}")
    url = optional_column(table, "url", pa.string())
    derived = {
        "id": table.column("id").cast(pa.string()),
        "text": table.column("text").cast(pa.string()),
        "url": url,
        "snapshot": pc.fill_null(optional_column(table, "snapshot", pa.string()), "unknown"),
        "crawl_time": crawl_time_column(table),
        "quality": quality_column(table),
        "domain": table.column("domain").cast(pa.string()) if "domain" in table.column_names else domain_column(url),
    }
    for name, column in derived.items():
        table = with_column(table, name, column)
    return table


def with_column(table: pa.Table, name: str, column) -> pa.Table:
    """table with column `name` replaced, or appended when it has none."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def optional_column(table: pa.Table, name: str, type_: pa.DataType):
    return table.column(name).cast(type_) if name in table.column_names else pa.nulls(len(table), type_)


def crawl_time_column(table: pa.Table):
    if "crawl_time" not in table.column_names:
        return pa.nulls(len(table), TIMESTAMP)
    column = table.column("crawl_time")
    try:
        return pc.cast(column, TIMESTAMP, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise XgenError(f"dedup input column crawl_time ({column.type}) does not read as a timestamp: {error}") from None


def quality_column(table: pa.Table):
    """The quality score used to rank variants: an explicit `quality` column, else ingest's language score."""
    for name in ("quality", "language_score"):
        if name in table.column_names:
            return table.column(name).cast(pa.float64())
    return pa.nulls(len(table), pa.float64())


def domain_column(urls) -> pa.Array:
    return pa.array([url_host(url) for url in urls.to_pylist()], pa.string())


def url_host(url: str | None) -> str | None:
    """Lower-cased host of the URL without a leading www. (None when the URL has no host)."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host[4:] if host.startswith("www.") else host


BINARY_CODEPOINTS = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFFFD]
BINARY_RE = re.compile("[" + "".join(re.escape(chr(c)) for c in BINARY_CODEPOINTS) + "]")
WITHOUT_BINARY = str.maketrans("", "", "".join(map(chr, BINARY_CODEPOINTS)))


def binary_share(text: str) -> float:
    """Share of characters that text does not contain: C0 controls (bar tab and newlines), DEL and U+FFFD."""
    if not BINARY_RE.search(text):  # cheap test first: clean text is the common case
        return 0.0
    return (len(text) - len(text.translate(WITHOUT_BINARY))) / max(len(text), 1)


def row_problem(doc_id: str | None, text: str | None, max_doc_chars: int) -> str | None:
    """The quarantine reason visible in the row alone: no id or text, blank, oversized, binary; None if fine."""
    if not doc_id:
        return "missing_id"
    if text is None:
        return "missing_text"
    if not text.strip():
        return "empty"
    if len(text) > max_doc_chars:
        return "too_long"
    if binary_share(text) > BINARY_SHARE_LIMIT:
        return "binary_looking"
    return None


def content_hash(text: str | None) -> str | None:
    """Hex SHA-1 of the UTF-8 text: the exact-duplicate key."""
    return None if text is None else hashlib.sha1(text.encode("utf-8")).hexdigest()


def content_node(digest: str | None) -> int | None:
    """The graph vertex of a text: a 60-bit integer taken from its content hash."""
    return None if digest is None else int(digest[:15], 16)


PER_DOCUMENT_SCHEMA = T.StructType(
    [
        T.StructField("chunk", T.IntegerType()),
        T.StructField("row", T.IntegerType()),
        T.StructField("id", T.StringType()),
        T.StructField("node", T.LongType()),
        T.StructField("snapshot", T.StringType()),
        T.StructField("url", T.StringType()),
        T.StructField("domain", T.StringType()),
        T.StructField("crawl_time", T.TimestampType()),
        T.StructField("quality", T.DoubleType()),
        T.StructField("length", T.IntegerType()),
        T.StructField("quarantine_reason", T.StringType()),
        T.StructField("signature", T.BinaryType()),
        T.StructField("has_shingles", T.BooleanType()),
    ]
)
CHUNK_SCHEMA = "chunk int, uri string, row_start long, row_count long"
SCAN_BATCH_ROWS = 8192


def chunk_frame(spark: SparkSession, chunks: list[Chunk]) -> DataFrame:
    """One row and one partition per chunk: each task reads its own documents."""
    rows = [(c.index, c.uri, c.row_start, c.row_count) for c in chunks]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(1, len(rows))), CHUNK_SCHEMA)


def chunk_of(row: dict) -> Chunk:
    return Chunk(row["chunk"], row["uri"], row["row_start"], row["row_count"])


def scan_chunks(params: DedupParams, skip_snapshots: frozenset[str], with_signatures: bool):
    """mapInArrow over chunk descriptors: every document's slim columns and quarantine reason, and a signature on
    the first row of each distinct (snapshot, text) of the chunk (others carry nulls) unless its snapshot is skipped."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in batch.to_pylist():
                yield from scan_chunk(chunk_of(row), params, skip_snapshots, with_signatures)

    return compute


def scan_chunk(chunk: Chunk, params: DedupParams, skip_snapshots: frozenset[str], with_signatures: bool):
    docs = normalised_documents(read_chunk(chunk))
    ids, texts = docs.column("id").to_pylist(), docs.column("text").to_pylist()
    snapshots = docs.column("snapshot").to_pylist()
    reasons = [row_problem(doc_id, text, params.max_doc_chars) for doc_id, text in zip(ids, texts)]
    nodes = [content_node(content_hash(text)) for text in texts]
    signature_column: list = [None] * len(docs)
    shingles_column: list = [None] * len(docs)
    if with_signatures:
        first_row_of_key = {}
        for row, key in enumerate(zip(snapshots, nodes)):
            if reasons[row] is None and key[0] not in skip_snapshots:
                first_row_of_key.setdefault(key, row)
        signature_of = signatures_by_node(texts, first_row_of_key, params)
        for (_, node), row in first_row_of_key.items():
            signature_column[row], shingles_column[row] = signature_of[node]
    columns = {
        "chunk": pa.array(np.full(len(docs), chunk.index, np.int32)),
        "row": pa.array(np.arange(len(docs), dtype=np.int32)),
        "id": docs.column("id"),
        "node": pa.array(nodes, pa.int64()),
        "snapshot": docs.column("snapshot"),
        "url": docs.column("url"),
        "domain": docs.column("domain"),
        "crawl_time": docs.column("crawl_time"),
        "quality": docs.column("quality"),
        "length": pa.array([None if t is None else len(t) for t in texts], pa.int32()),
        "quarantine_reason": pa.array(reasons, pa.string()),
        "signature": pa.array(signature_column, pa.binary()),
        "has_shingles": pa.array(shingles_column, pa.bool_()),
    }
    yield from pa.table(columns).to_batches(max_chunksize=SCAN_BATCH_ROWS)


def signatures_by_node(texts: list, first_row_of_key: dict, params: DedupParams) -> dict:
    """node -> (signature bytes, has_shingles): one MinHash per distinct text, however many snapshots hold it."""
    first_row_of_text: dict = {}
    for (_, node), row in first_row_of_key.items():
        first_row_of_text.setdefault(node, row)
    distinct = list(first_row_of_text.items())
    signature_of = {}
    for start in range(0, len(distinct), SCAN_BATCH_ROWS):
        part = distinct[start : start + SCAN_BATCH_ROWS]
        sigs, has_shingles = minhash.signatures([texts[row] for _, row in part], params.ngram, params.num_perm, params.seed)
        for index, (node, _) in enumerate(part):
            signature_of[node] = (sigs[index].tobytes(), bool(has_shingles[index]))
    return signature_of


def rank_repeated_ids(slim: DataFrame) -> DataFrame:
    """Add id_rank: 1 for the row that keeps its id, 2, 3, ... for later rows repeating it.

    The smallest (node, snapshot, url) keeps the id, then input order, so the choice is deterministic.
    """
    order = ["node", "snapshot", "url", "chunk", "row"]
    return slim.withColumn("id_rank", F.row_number().over(Window.partitionBy("id").orderBy(*order)))


# ---------------------------------------------------------------------------------------------------------------
# Signatures, stored per snapshot partition

SIGNATURE_SCHEMA = T.StructType(
    [
        T.StructField("snapshot", T.StringType()),
        T.StructField("node", T.LongType()),
        T.StructField("signature", T.BinaryType()),
        T.StructField("has_shingles", T.BooleanType()),
    ]
)


def fixed_width_binary(rows: np.ndarray) -> pa.Array:
    """An Arrow binary array with one value per row of a 2-D array, built without a Python loop."""
    data = np.ascontiguousarray(rows)
    width = data.shape[1] * data.itemsize
    offsets = np.arange(len(data) + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])


def signature_matrix(column: pa.Array, num_perm: int) -> np.ndarray:
    """Inverse of fixed_width_binary: uint32[n, num_perm] from a binary column of signatures."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data = column.buffers()[2]
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    flat = np.frombuffer(data, dtype=np.uint32, count=(offsets[-1] - offsets[0]) // 4, offset=int(offsets[0]))
    return flat.reshape(len(column), num_perm)


def snapshot_fingerprints(docs: DataFrame, params: DedupParams) -> DataFrame:
    """Per snapshot: what its signatures depend on (the set of distinct texts and the MinHash settings).

    Order-independent sums of two 64-bit hashes over the distinct content nodes, as exact decimals.
    """
    distinct = docs.select("snapshot", "node").distinct()
    return distinct.groupBy("snapshot").agg(
        F.count("*").alias("n_texts"),
        F.sum(F.xxhash64("node").cast("decimal(38,0)")).cast("string").alias("digest_a"),
        F.sum(F.hash("node").cast("decimal(38,0)")).cast("string").alias("digest_b"),
        F.lit(params.signature_key()).alias("signature_key"),
    )


def reusable_snapshots(spark: SparkSession, docs: DataFrame, params: DedupParams, previous: str | None) -> list[str]:
    """Snapshots whose distinct texts (and MinHash settings) equal those the previous dedup output hashed."""
    if not previous:
        return []
    fingerprints = snapshot_fingerprints(docs, params)
    old_fingerprints = spark.read.parquet(f"{previous}/signature_index")
    same = fingerprints.join(old_fingerprints, ["snapshot", "n_texts", "digest_a", "digest_b", "signature_key"])
    return sorted(row.snapshot for row in same.select("snapshot").collect())


def signatures_of(per_document: DataFrame, spark: SparkSession, previous: str | None, reused: list[str]) -> DataFrame:
    fresh = per_document.filter(F.col("signature").isNotNull()).select(*SIGNATURE_SCHEMA.names)
    if not reused:
        return fresh
    old = spark.read.schema(SIGNATURE_SCHEMA).parquet(f"{previous}/signatures").filter(F.col("snapshot").isin(reused))
    return fresh.unionByName(old)


def write_signatures(signatures: DataFrame, uri: str, n_files: int) -> None:
    """One file per snapshot directory, one row per distinct text of that snapshot, sorted by node."""
    by_snapshot = signatures.repartition(n_files, "snapshot").dropDuplicates(["snapshot", "node"])
    # Signatures are random bytes: dictionary encoding would only spend time discovering that.
    writer = by_snapshot.sortWithinPartitions("snapshot", "node").write.option("parquet.enable.dictionary", "false")
    writer.mode("overwrite").partitionBy("snapshot").parquet(uri)
    rename_parts(signatures.sparkSession, uri)


# ---------------------------------------------------------------------------------------------------------------
# Candidate edges and connected components

BLOCK_SCHEMA = T.StructType([T.StructField("partition_key", T.LongType()), T.StructField("pairs", T.BinaryType())])
EDGE_SCHEMA = T.StructType([T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())])


def band_blocks(params: DedupParams, partition_keys: list[int]):
    """mapInArrow: each batch's (band_key, node) pairs, packed into one binary block per target partition.

    Every document lands in `bands` buckets; shuffling one Spark row per (document, band) costs more than the
    banding itself, so the pairs travel as a few large blocks, routed by band_key, and are unpacked in numpy.
    """
    bands, rows = minhash.lsh_params(params.threshold, params.num_perm)
    n_partitions = len(partition_keys)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            keys = minhash.band_keys(signature_matrix(batch.column("signature"), params.num_perm), bands, rows)
            pairs = np.stack([keys.reshape(-1), np.repeat(batch.column("node").to_numpy(), bands)], axis=1)
            target = (pairs[:, 0].view(np.uint64) % np.uint64(n_partitions)).astype(np.int64)
            order = np.argsort(target, kind="stable")
            pairs, target = pairs[order], target[order]
            starts = np.searchsorted(target, np.arange(n_partitions + 1))
            blocks = [(partition_keys[p], pairs[starts[p] : starts[p + 1]].tobytes()) for p in range(n_partitions) if starts[p + 1] > starts[p]]
            yield pa.RecordBatch.from_arrays(
                [pa.array([k for k, _ in blocks], pa.int64()), pa.array([b for _, b in blocks], pa.binary())],
                names=["partition_key", "pairs"],
            )

    return compute


def bucket_star_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over a partition's blocks, which hold whole buckets: star edges from each shared bucket's members
    to its minimum (one numpy sort of the partition's pairs)."""
    blocks = [block for batch in batches for block in batch.column("pairs").to_pylist()]
    if not blocks:
        return
    pairs = np.frombuffer(b"".join(blocks), dtype=np.int64).reshape(-1, 2)
    key, node = pairs[:, 0], pairs[:, 1]
    order = np.lexsort((node, key))
    node, key = node[order], key[order]
    first_of_bucket = np.r_[True, key[1:] != key[:-1]]
    bucket_min = node[first_of_bucket][np.cumsum(first_of_bucket) - 1]
    member = node != bucket_min
    src, dst = node[member], bucket_min[member]
    if len(src):
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
        fresh = np.r_[True, (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])]
        src, dst = src[fresh], dst[fresh]
    yield pa.RecordBatch.from_arrays([pa.array(src, pa.int64()), pa.array(dst, pa.int64())], names=["src", "dst"])


def candidate_edges(signatures: DataFrame, params: DedupParams, partitions: int) -> DataFrame:
    """Edges (src, dst), src > dst: every member of an LSH bucket linked to the bucket's smallest node.

    A star per bucket keeps the edge count linear in bucket size (a bucket of 10,000 exact copies would give 50M
    pairs) while leaving the components unchanged. A text stored for several snapshots lands in the same buckets
    several times, and a pair sharing several bands gives the same edge in several partitions: the final distinct
    absorbs both.
    """
    keys = placement_keys(signatures.sparkSession, partitions)
    blocks = signatures.filter("has_shingles").select("node", "signature").mapInArrow(band_blocks(params, keys), BLOCK_SCHEMA)
    by_bucket = blocks.repartition(partitions, "partition_key")
    return by_bucket.mapInArrow(bucket_star_batches, EDGE_SCHEMA).distinct()


def verify_batches(params: DedupParams):
    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            left = signature_matrix(batch.column("src_signature"), params.num_perm)
            right = signature_matrix(batch.column("dst_signature"), params.num_perm)
            similar = minhash.estimated_jaccard(left, right) >= params.threshold
            yield batch.select(["src", "dst"]).filter(pa.array(similar))

    return compute


def verified_edges(edges: DataFrame, node_signatures: DataFrame, params: DedupParams) -> DataFrame:
    """Keep candidate edges whose MinHash-estimated Jaccard similarity reaches the threshold."""
    sigs = node_signatures.select("node", "signature")
    joined = edges.join(sigs.withColumnsRenamed({"node": "src", "signature": "src_signature"}), "src").join(
        sigs.withColumnsRenamed({"node": "dst", "signature": "dst_signature"}), "dst"
    )
    return joined.select("src", "dst", "src_signature", "dst_signature").mapInArrow(verify_batches(params), EDGE_SCHEMA)


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


# ---------------------------------------------------------------------------------------------------------------
# Cluster metadata and top-k


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


def cluster_metadata(slim: DataFrame, roots: DataFrame, params: DedupParams) -> DataFrame:
    """Per (chunk, row): cluster_id, frequency metadata, cluster_rank and kept.

    One exchange brings each cluster's slim rows together; the statistics and ranks of a whole partition are then
    computed at once with Arrow sorts and group-bys (cheaper than Spark's three windows and a distinct-count
    aggregation on a short job).
    """
    rank_sort_keys(params.rank_by)  # unknown keys fail here, on the driver
    clustered = slim.join(roots, "node", "left").withColumn("root", F.coalesce("root", "node"))
    columns = ["chunk", "row", "id", "node", "root", "snapshot", "domain", "crawl_time", "quality", "length"]
    return clustered.select(*columns).repartition("root").mapInArrow(cluster_annotations(params), ANNOTATION_SCHEMA)


def cluster_annotations(params: DedupParams):
    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [batch for batch in batches if batch.num_rows]
        if batches:
            yield from annotate_clusters(pa.Table.from_batches(batches), params).to_batches()

    return compute


def annotate_clusters(rows: pa.Table, params: DedupParams) -> pa.Table:
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


def placement_keys(spark: SparkSession, n_partitions: int) -> list[int]:
    """keys[i] is a number that Spark's hash partitioning sends to partition i of n_partitions.

    Repartitioning rows of group i by keys[i] gives every group a task of its own (hashing i itself would put two
    groups in one task and none in another).
    """
    candidates = spark.range(64 * n_partitions).select(
        F.col("id").alias("key"), F.expr(f"pmod(hash(id), {n_partitions})").alias("partition")
    )
    first = dict(candidates.groupBy("partition").agg(F.min("key").alias("key")).collect())
    if len(first) < n_partitions:
        raise RuntimeError(f"no hash key found for {n_partitions - len(first)} of {n_partitions} partitions")
    return [int(first[i]) for i in range(n_partitions)]


def write_chunks(chunks: list[Chunk], data_uri: str, quarantine_uri: str, schemas: tuple[pa.Schema, pa.Schema]):
    """mapInArrow over annotations sorted by (chunk, row): write each chunk's documents and quarantined rows."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        batches = [batch for batch in batches if batch.num_rows]
        if not batches:
            return
        annotations = pa.Table.from_batches(batches)
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
    hashes = pa.array([content_hash(text) for text in docs.column("text").to_pylist()], pa.string())
    docs = with_column(docs, "content_hash", hashes)
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


def parquet_inputs(spark: SparkSession, input_uri: str | list[str], scratch_uri: str) -> list[str]:
    """The input's Parquet files; JSONL inputs are first converted by Spark (schema inference, malformed lines
    kept as rows without id), into scratch_uri."""
    uris = [input_uri] if isinstance(input_uri, str) else list(input_uri)
    files = data_files(uris)
    if input_format(files, ", ".join(uris)) == "parquet":
        return files
    documents = spark.read.option("mode", "PERMISSIVE").json(files)
    if "crawl_time" in documents.columns:
        documents = documents.withColumn("crawl_time", F.col("crawl_time").cast("timestamp"))
    documents.write.mode("overwrite").parquet(scratch_uri)
    rename_parts(spark, scratch_uri)
    return data_files([scratch_uri])


def unified_schema(files: list[str], rows_per_chunk: int) -> tuple[list[Chunk], pa.Schema]:
    try:
        return plan_chunks(files, rows_per_chunk)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise XgenError(f"dedup input files disagree on their columns: {error}") from None


# ---------------------------------------------------------------------------------------------------------------
# The job


def run_dedup(
    spark: SparkSession,
    input_uri: str | list[str],
    output_uri: str,
    params: DedupParams,
    previous: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Deduplicate `input_uri` (one URI or several) into `output_uri`/{data, quarantine, signatures, signature_index}; returns counts.

    `previous` is an earlier dedup output: its signatures are reused for snapshots whose contents are unchanged.
    The texts are read twice by Python tasks, never shipped through Spark: once to check and hash them, once to
    write them out with their annotations.
    """
    started = time.perf_counter()

    def done(step: str) -> None:
        log(f"dedup: {step} ({time.perf_counter() - started:.1f} s)")

    scratch = join(output_uri, "_input")
    chunks, input_schema = unified_schema(parquet_inputs(spark, input_uri, scratch), params.rows_per_chunk)
    schemas = output_schemas(input_schema)
    descriptors = chunk_frame(spark, chunks)

    reused: list[str] = []
    if previous:
        nodes = descriptors.mapInArrow(scan_chunks(params, frozenset(), False), PER_DOCUMENT_SCHEMA)
        reused = reusable_snapshots(spark, nodes.filter(F.col("quarantine_reason").isNull()), params, previous)
    scan = scan_chunks(params, frozenset(reused), True)
    per_document = descriptors.mapInArrow(scan, PER_DOCUMENT_SCHEMA).localCheckpoint()
    done("documents hashed")
    hashable = per_document.filter(F.col("quarantine_reason").isNull())
    # Fresh signatures from memory, reused ones from the previous output.
    signatures = signatures_of(hashable, spark, previous, reused)
    with ThreadPoolExecutor(max_workers=1) as background:
        # Nothing below reads the stored signatures: Spark runs their write in the gaps of the graph jobs.
        stored = background.submit(store_signatures, signatures, hashable, output_uri, params)
        edges = candidate_edges(signatures, params, int(spark.conf.get("spark.sql.shuffle.partitions")))
        if params.verify_jaccard:
            # A text seen in several snapshots or chunks has one signature: keep one row per node.
            edges = verified_edges(edges, signatures.select("node", "signature").dropDuplicates(["node"]), params)
        roots = connected_components(edges, log)
        done("connected components")
        counts = write_documents(spark, per_document, roots, chunks, schemas, output_uri, params)
        done("documents written")
        stored.result()
    done(f"signatures written (reused for {len(reused)} snapshot(s))")
    store_for(output_uri).delete_prefix(normalize_uri(scratch))
    counts["snapshots_reusing_signatures"] = len(reused)
    return counts


def store_signatures(signatures: DataFrame, hashable: DataFrame, output_uri: str, params: DedupParams) -> None:
    """signatures/ per snapshot, for the next refresh, and signature_index/ telling which snapshot they cover."""
    write_signatures(signatures, f"{output_uri}/signatures", signatures.sparkSession.sparkContext.defaultParallelism)
    # The distinct (snapshot, text) pairs of the documents are those the signatures hold, reused or not.
    write_deterministic_parquet(snapshot_fingerprints(hashable, params), f"{output_uri}/signature_index", 1, ["snapshot"])


def write_documents(spark, per_document: DataFrame, roots: DataFrame, chunks: list[Chunk], schemas, output_uri: str, params: DedupParams) -> dict:
    """data/ and quarantine/, one file per input chunk: every document with its annotations or quarantine reason."""
    hashable = per_document.filter(F.col("quarantine_reason").isNull())
    ranked = rank_repeated_ids(hashable.drop("signature", "has_shingles"))
    metadata = cluster_metadata(ranked.filter("id_rank = 1").drop("id_rank"), roots, params)
    repeated = ranked.filter("id_rank > 1").select("chunk", "row", F.lit("duplicate_id").alias("quarantine_reason"))
    bad_rows = per_document.filter(F.col("quarantine_reason").isNotNull()).select("chunk", "row", "quarantine_reason")
    placement = metadata.unionByName(bad_rows.unionByName(repeated), allowMissingColumns=True)
    keys = spark.createDataFrame(list(enumerate(placement_keys(spark, len(chunks)))), "chunk int, partition_key long")
    by_chunk = placement.join(F.broadcast(keys), "chunk").repartition(len(chunks), "partition_key")
    for folder in ("data", "quarantine"):
        store_for(output_uri).delete_prefix(normalize_uri(join(output_uri, folder)))
    writer = write_chunks(chunks, join(output_uri, "data"), join(output_uri, "quarantine"), schemas)
    per_chunk = by_chunk.sortWithinPartitions("chunk", "row").select(*PLACEMENT_COLUMNS).mapInArrow(writer, COUNT_SCHEMA)
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


def cluster_size_histogram(spark: SparkSession, output_uri: str) -> list[tuple[int, int]]:
    """(cluster size, number of clusters) pairs for the report."""
    data = spark.read.parquet(f"{output_uri}/data").filter("cluster_rank = 1")
    rows = data.groupBy("cluster_size").count().orderBy("cluster_size").collect()
    return [(int(row.cluster_size), int(row["count"])) for row in rows]


def params_from_config(cfg) -> DedupParams:
    c = cfg.dedup
    return DedupParams(
        ngram=c.ngram, num_perm=c.num_perm, seed=c.seed, threshold=c.threshold, top_k=c.top_k,
        verify_jaccard=c.verify_jaccard, rank_by=tuple(c.rank_by), rows_per_chunk=c.rows_per_chunk,
        max_doc_chars=c.max_doc_chars,
    )  # fmt: skip


def documents_uri(uri: str) -> str:
    """A committed stage artifact holds its documents under data/; anything else is read as given."""
    from xgen_core.artifacts import is_committed
    from xgen_core.storage import join

    return join(uri, "data") if is_committed(uri) else uri


def run(ctx) -> dict:
    """The `dedup` stage: reads the ingest artifact (or --input), writes data/, quarantine/, signatures/."""
    source = ctx.external_inputs or [documents_uri(ctx.inputs["ingest"])]
    previous = ctx.cfg.dedup.reuse_signatures_from or None
    counts = run_dedup(ctx.spark(), source, ctx.output, params_from_config(ctx.cfg), previous, ctx.log)
    histogram = cluster_size_histogram(ctx.spark(), ctx.output)
    return {"counts": counts, "metrics": {"cluster_size_histogram": histogram}}
