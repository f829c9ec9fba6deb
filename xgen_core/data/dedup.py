"""Exact + fuzzy deduplication that annotates instead of dropping (paper section 2.2).

Flow, all in Spark (nothing but small per-snapshot summaries reaches the driver):
  documents -> quarantine bad rows -> content hash (exact key)
  -> MinHash signatures per snapshot partition (vectorised over Arrow batches; reused from a previous run when the
     snapshot's contents are unchanged) -> LSH band keys -> star edges to each bucket's smallest member
  -> optional MinHash-estimated Jaccard check of each edge -> connected components (large-star / small-star)
  -> every document joins the component of its content hash (exact copies share one node)
  -> per cluster: size, snapshots, domains, first/last seen; top-k distinct variants kept, the rest flagged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.data import minhash
from xgen_core.data.sparkio import read_documents, rename_parts, write_deterministic_parquet

# Bump when the shingling or signature layout changes: stored signatures from another version are not reused.
SIGNATURE_VERSION = 1
RANK_KEYS = ("quality", "recency", "length")
BINARY_SHARE_LIMIT = 0.05
# Up to this many documents the per-document metadata (about 150 bytes a row) is broadcast to the final join.
BROADCAST_METADATA_ROWS = 2_000_000


@dataclass(frozen=True)
class DedupParams:
    ngram: int
    num_perm: int
    seed: int
    threshold: float
    top_k: int
    verify_jaccard: bool
    rank_by: tuple[str, ...]
    output_files: int
    max_doc_chars: int

    def signature_key(self) -> str:
        return f"v{SIGNATURE_VERSION}-n{self.ngram}-p{self.num_perm}-s{self.seed}"


# ---------------------------------------------------------------------------------------------------------------
# Input normalisation and quarantine


def normalise_documents(raw: DataFrame) -> DataFrame:
    """Map the accepted input shapes (sample JSONL, ingest Parquet) onto one schema.

    Ingest names the key `doc_id`; plain inputs may lack domain, crawl time or a quality column.
    """
    columns = set(raw.columns)
    df = raw.withColumnRenamed("doc_id", "id") if "id" not in columns and "doc_id" in columns else raw
    columns = set(df.columns)
    missing = {"id", "text"} - columns
    if missing:
        from xgen_core.errors import XgenError

        raise XgenError(f"dedup input lacks column(s) {sorted(missing)}; found {sorted(columns)}")
    host = F.lower(F.expr("parse_url(url, 'HOST')"))
    derived = {
        "id": F.col("id").cast("string"),
        "text": F.col("text").cast("string"),
        "url": F.col("url").cast("string") if "url" in columns else F.lit(None).cast("string"),
        "snapshot": F.coalesce(F.col("snapshot").cast("string"), F.lit("unknown"))
        if "snapshot" in columns
        else F.lit("unknown"),
        "crawl_time": F.col("crawl_time").cast("timestamp") if "crawl_time" in columns else F.lit(None).cast("timestamp"),
        "quality": quality_column(columns),
    }
    if "domain" not in columns:
        derived["domain"] = F.regexp_replace(host, r"^www\.", "")
    return df.withColumns(derived)


def quality_column(columns: set[str]) -> Column:
    """The quality score used to rank variants: an explicit `quality` column, else ingest's language score."""
    if "quality" in columns:
        return F.col("quality").cast("double")
    if "language_score" in columns:
        return F.col("language_score").cast("double")
    return F.lit(None).cast("double")


def with_row_problems(docs: DataFrame, max_doc_chars: int) -> DataFrame:
    """Add quarantine_reason for problems visible in the row alone: no id or text, blank, oversized, binary."""
    reason = (
        F.when(F.col("id").isNull() | (F.col("id") == ""), F.lit("missing_id"))
        .when(F.col("text").isNull(), F.lit("missing_text"))
        .when(F.trim("text") == "", F.lit("empty"))
        .when(F.length("text") > max_doc_chars, F.lit("too_long"))
        .when(binary_share(F.col("text")) > BINARY_SHARE_LIMIT, F.lit("binary_looking"))
    )
    return docs.withColumn("quarantine_reason", reason)


ROW_KEY = ["id", "node", "snapshot", "url"]


def rank_repeated_ids(slim: DataFrame) -> DataFrame:
    """Add id_rank: 1 for the row that keeps its id, 2, 3, ... for later rows repeating it.

    The smallest (node, snapshot, url) keeps the id, so the choice is deterministic; only slim columns shuffle.
    """
    return slim.withColumn("id_rank", F.row_number().over(Window.partitionBy("id").orderBy("node", "snapshot", "url")))


def repeated_id_keys(ranked: DataFrame) -> DataFrame:
    """Row keys of the rows that lose their id (a row identical in every key to the kept one is not among them)."""
    winners = ranked.filter("id_rank = 1").select(*ROW_KEY)
    return ranked.filter("id_rank > 1").select(*ROW_KEY).distinct().join(winners, ROW_KEY, "left_anti")


BINARY_CODEPOINTS = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFFFD]
BINARY_CHARS = "".join(map(chr, BINARY_CODEPOINTS))
BINARY_PATTERN = "[" + "".join(f"\\x{{{c:x}}}" for c in BINARY_CODEPOINTS) + "]"


def binary_share(text: Column) -> Column:
    """Share of characters that text does not contain: C0 controls (bar tab and newlines), DEL and U+FFFD.

    The regex test runs first because it is several times cheaper than counting with translate on clean text.
    """
    without_binary = F.translate(text, BINARY_CHARS, "")
    share = (F.length(text) - F.length(without_binary)) / F.greatest(F.length(text), F.lit(1))
    return F.when(text.rlike(BINARY_PATTERN), share).otherwise(F.lit(0.0))


def with_content_key(docs: DataFrame) -> DataFrame:
    """content_hash (hex SHA-1 of the text) and node, a 60-bit integer taken from it, the graph vertex of the text."""
    return docs.withColumn("content_hash", F.sha1("text")).withColumn(
        "node", F.conv(F.substring("content_hash", 1, 15), 16, 10).cast("long")
    )


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


SLIM_NAMES = ["id", "node", "snapshot", "url", "domain", "crawl_time", "quality", "length"]


def per_document_schema(slim: T.StructType) -> T.StructType:
    return T.StructType(
        list(slim.fields) + [T.StructField("signature", T.BinaryType()), T.StructField("has_shingles", T.BooleanType())]
    )


def signature_batches(params: DedupParams):
    """mapInArrow function: each document's slim columns, plus its signature on the first row of every distinct
    (snapshot, text) in the batch whose `fresh` flag is set (other rows carry nulls)."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            snapshots = batch.column("snapshot").to_pylist()
            nodes = batch.column("node").to_pylist()
            fresh = batch.column("fresh").to_pylist()
            first_row = {}
            for row, key in enumerate(zip(snapshots, nodes)):
                if fresh[row]:
                    first_row.setdefault(key, row)
            rows = list(first_row.values())
            texts = batch.column("text").take(pa.array(rows, pa.int64())).to_pylist()
            sigs, has_shingles = minhash.signatures(texts, params.ngram, params.num_perm, params.seed)
            signature_column: list = [None] * batch.num_rows
            shingles_column: list = [None] * batch.num_rows
            for index, row in enumerate(rows):
                signature_column[row] = sigs[index].tobytes()
                shingles_column[row] = bool(has_shingles[index])
            slim = [batch.column(name) for name in SLIM_NAMES]
            yield pa.RecordBatch.from_arrays(
                slim + [pa.array(signature_column, pa.binary()), pa.array(shingles_column, pa.bool_())],
                names=SLIM_NAMES + ["signature", "has_shingles"],
            )

    return compute


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


def hash_documents(docs: DataFrame, params: DedupParams, reused: list[str]) -> DataFrame:
    """One pass over the texts: slim per-document columns, and signatures for the snapshots not reused."""
    fresh = ~F.col("snapshot").isin(reused) if reused else F.lit(True)
    slim = docs.select(*slim_columns(), "text", fresh.alias("fresh"))
    schema = per_document_schema(slim.drop("text", "fresh").schema)
    return slim.mapInArrow(signature_batches(params), schema)


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

BAND_SCHEMA = T.StructType([T.StructField("node", T.LongType()), T.StructField("band_key", T.LongType())])


def band_batches(params: DedupParams):
    bands, rows = minhash.lsh_params(params.threshold, params.num_perm)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            sigs = signature_matrix(batch.column("signature"), params.num_perm)
            keys = minhash.band_keys(sigs, bands, rows)
            nodes = np.repeat(batch.column("node").to_numpy(), bands)
            yield pa.RecordBatch.from_arrays([pa.array(nodes), pa.array(keys.reshape(-1))], names=["node", "band_key"])

    return compute


EDGE_SCHEMA = T.StructType([T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())])


def bucket_star_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over a partition holding whole buckets: star edges from each shared bucket's members to its minimum.

    Sorting the partition's (band_key, node) pairs with numpy replaces a per-bucket array aggregation in Spark.
    """
    nodes, keys = [], []
    for batch in batches:
        nodes.append(batch.column("node").to_numpy())
        keys.append(batch.column("band_key").to_numpy())
    if not nodes:
        return
    node, key = np.concatenate(nodes), np.concatenate(keys)
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
    several times, which the final distinct absorbs.
    """
    banded = signatures.filter("has_shingles").select("node", "signature").mapInArrow(band_batches(params), BAND_SCHEMA)
    by_bucket = banded.repartition(partitions, "band_key")
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


def rank_order(rank_by: tuple[str, ...]) -> list[Column]:
    unknown = set(rank_by) - set(RANK_KEYS)
    if unknown:
        from xgen_core.errors import XgenError

        raise XgenError(f"dedup.rank_by has unknown key(s) {sorted(unknown)}; allowed: {list(RANK_KEYS)}")
    columns = {
        "quality": [F.col("quality").desc_nulls_last()],
        "recency": [F.col("crawl_time").desc_nulls_last(), F.col("snapshot").desc()],
        "length": [F.col("length").desc()],
    }
    return [column for key in rank_by for column in columns[key]] + [F.col("id").asc()]


def slim_columns() -> list:
    """The columns cluster metadata needs, without the text."""
    return [*ROW_KEY, "domain", "crawl_time", "quality", F.length("text").alias("length")]


def cluster_metadata(slim: DataFrame, roots: DataFrame, params: DedupParams) -> DataFrame:
    """Per row key: cluster_id, frequency metadata, cluster_rank and kept (slim columns only, one row per id)."""
    clustered = slim.join(roots, "node", "left").withColumn("root", F.coalesce("root", "node"))
    # One exchange by root serves the statistics and all three windows below.
    clustered = clustered.repartition("root")
    stats = clustered.groupBy("root").agg(
        F.min("id").alias("cluster_id"),
        F.count("*").alias("cluster_size"),
        F.countDistinct("node").alias("n_variants"),
        F.countDistinct("snapshot").alias("n_snapshots"),
        F.countDistinct("domain").alias("n_domains"),
        F.min("snapshot").alias("first_snapshot"),
        F.max("snapshot").alias("last_snapshot"),
        F.min("crawl_time").alias("first_seen"),
        F.max("crawl_time").alias("last_seen"),
    )
    order = rank_order(params.rank_by)
    ranked = clustered.withColumn("exact_rank", F.row_number().over(Window.partitionBy("root", "node").orderBy(*order)))
    ranked = ranked.withColumn("n_exact", F.count("*").over(Window.partitionBy("root", "node")))
    # Exact repeats of a text go after every distinct variant: keeping them would add no lexical diversity.
    cluster_order = [(F.col("exact_rank") > 1).asc()] + order
    ranked = ranked.withColumn("cluster_rank", F.row_number().over(Window.partitionBy("root").orderBy(*cluster_order)))
    ranked = ranked.withColumn("kept", (F.col("exact_rank") == 1) & (F.col("cluster_rank") <= params.top_k))
    per_doc = ranked.select(*ROW_KEY, "root", "cluster_rank", "kept", "n_exact")
    return per_doc.join(stats, "root").drop("root")


OUTPUT_LEADING_COLUMNS = [
    "id", "cluster_id", "cluster_size", "n_snapshots", "n_domains", "kept", "cluster_rank", "n_variants", "n_exact",
    "first_snapshot", "last_snapshot", "first_seen", "last_seen", "content_hash",
    "text", "url", "domain", "snapshot", "crawl_time", "quality",
]  # fmt: skip


def output_columns(df: DataFrame) -> list[str]:
    rest = sorted(c for c in df.columns if c not in OUTPUT_LEADING_COLUMNS)
    return OUTPUT_LEADING_COLUMNS + rest


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
    The texts are read twice rather than cached: once to hash them (signatures plus the slim per-document columns,
    which are kept) and once to write them out with their metadata.
    """
    started = time.perf_counter()

    def done(step: str) -> None:
        log(f"dedup: {step} ({time.perf_counter() - started:.1f} s)")

    documents = normalise_documents(read_documents(spark, input_uri))
    checked = with_row_problems(with_content_key(documents), params.max_doc_chars)
    hashable = checked.filter(F.col("quarantine_reason").isNull()).drop("quarantine_reason")

    reused = reusable_snapshots(spark, hashable, params, previous)
    per_document = hash_documents(hashable, params, reused).localCheckpoint()
    done("documents hashed")
    write_signatures(signatures_of(per_document, spark, previous, reused), f"{output_uri}/signatures", spark.sparkContext.defaultParallelism)
    stored = spark.read.schema(SIGNATURE_SCHEMA).parquet(f"{output_uri}/signatures")
    # Written from the stored signatures (one row per distinct text and snapshot): the same values the documents
    # give, and the same file whether or not earlier signatures were reused.
    write_deterministic_parquet(snapshot_fingerprints(stored, params), f"{output_uri}/signature_index", 1, ["snapshot"])
    done(f"signatures written (reused for {len(reused)} snapshot(s))")

    edges = candidate_edges(stored, params, int(spark.conf.get("spark.sql.shuffle.partitions")))
    if params.verify_jaccard:
        # A text seen in several snapshots has one signature: keep one row per node.
        edges = verified_edges(edges, stored.select("node", "signature").dropDuplicates(["node"]), params)
    roots = connected_components(edges, log)
    done("connected components")

    ranked_ids = rank_repeated_ids(per_document.drop("signature", "has_shingles")).localCheckpoint()
    metadata = cluster_metadata(ranked_ids.filter("id_rank = 1").drop("id_rank"), roots, params)
    if ranked_ids.count() <= BROADCAST_METADATA_ROWS:
        # Ship the slim metadata to every task instead of shuffling the texts to meet it.
        metadata = F.broadcast(metadata)
    annotated = hashable.join(metadata, ROW_KEY).drop("node")
    write_deterministic_parquet(
        annotated.select(*output_columns(annotated)), f"{output_uri}/data", params.output_files,
        ["cluster_id", "cluster_rank"], partition_column="cluster_id",
    )  # fmt: skip
    done("documents written")
    quarantined = checked.filter(F.col("quarantine_reason").isNotNull())
    repeated_keys = repeated_id_keys(ranked_ids).localCheckpoint()
    n_repeated = repeated_keys.count()
    if n_repeated:
        keys = F.broadcast(repeated_keys) if n_repeated <= BROADCAST_METADATA_ROWS else repeated_keys
        repeated = hashable.join(keys, ROW_KEY, "left_semi")
        quarantined = quarantined.unionByName(repeated.withColumn("quarantine_reason", F.lit("duplicate_id")))
    write_deterministic_parquet(quarantined.drop("node"), f"{output_uri}/quarantine", 1, ["id", "quarantine_reason"])
    counts = dedup_counts(spark, output_uri, reused)
    done("counted")
    return counts


def dedup_counts(spark: SparkSession, output_uri: str, reused: list[str]) -> dict:
    data = spark.read.parquet(f"{output_uri}/data")
    summary = data.agg(
        F.count("*").alias("documents"),
        F.sum(F.col("kept").cast("long")).alias("kept"),
        F.countDistinct("cluster_id").alias("clusters"),
        F.sum(F.when(F.col("cluster_size") > 1, 1).otherwise(0)).alias("in_duplicate_clusters"),
        F.sum(F.when(F.col("n_exact") > 1, 1).otherwise(0)).alias("with_exact_copies"),
    ).first()
    quarantine = spark.read.parquet(f"{output_uri}/quarantine")
    reasons = {row.quarantine_reason: row["count"] for row in quarantine.groupBy("quarantine_reason").count().collect()}
    counts = {key: int(summary[key] or 0) for key in summary.asDict()}
    counts["not_kept"] = counts["documents"] - counts["kept"]
    counts["quarantined"] = sum(reasons.values())
    counts.update({f"quarantined_{reason}": int(n) for reason, n in sorted(reasons.items())})
    counts["snapshots_reusing_signatures"] = len(reused)
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
        verify_jaccard=c.verify_jaccard, rank_by=tuple(c.rank_by), output_files=c.output_files,
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
