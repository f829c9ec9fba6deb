"""Step 2: MinHash signatures, one per distinct text, stored per snapshot and reused by the next refresh."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data import minhash
from xgen_core.data.doc_chunks import write_parquet
from xgen_core.data.sparkio import pack_by_partition, placement_keys, unpack_records, write_deterministic_parquet
from xgen_core.storage import join, normalize_uri, store_for

# Bump when the shingling or signature layout changes: stored signatures from another version are not reused.
SIGNATURE_VERSION = 2
# Distinct texts hashed per numpy call (the same batch size the scan uses for its Arrow batches).
SIGNATURE_BATCH = 8192


def signature_key(params: DedupConfig) -> str:
    """What stored signatures depend on besides the texts: the version and the MinHash settings."""
    return f"v{SIGNATURE_VERSION}-n{params.ngram}-p{params.num_perm}-s{params.seed}-{params.hash_scheme}"


def signatures_of_rows(texts: list, rows: np.ndarray, nodes: np.ndarray, params: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uint32[len(rows), num_perm], has_shingles bool[len(rows)]) for texts[rows]: one MinHash per distinct text
    (node), however many of the rows hold it."""
    _, first, inverse = np.unique(nodes[rows], return_index=True, return_inverse=True)
    distinct = rows[first]
    sigs = np.empty((len(distinct), params.num_perm), dtype=np.uint32)
    has_shingles = np.zeros(len(distinct), dtype=bool)
    for start in range(0, len(distinct), SIGNATURE_BATCH):
        part = distinct[start : start + SIGNATURE_BATCH]
        sigs[start : start + len(part)], has_shingles[start : start + len(part)] = minhash.signatures(
            [texts[row] for row in part], params.ngram, params.num_perm, params.seed, scheme=params.hash_scheme
        )
    return sigs[inverse], has_shingles[inverse]


SIGNATURE_SCHEMA = T.StructType(
    [
        T.StructField("snapshot", T.StringType()),
        T.StructField("node", T.LongType()),
        T.StructField("signature", T.BinaryType()),
        T.StructField("has_shingles", T.BooleanType()),
    ]
)


def fixed_width_binary(rows: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow binary array with one value per row of a 2-D array, built without a Python loop.

    With `valid` (bool[n], as many True as `rows` has rows), an array of n values: the rows in the valid places,
    in order, and nulls elsewhere.
    """
    data = np.ascontiguousarray(rows)
    width = data.shape[1] * data.itemsize
    if valid is None:
        offsets = np.arange(len(data) + 1, dtype=np.int32) * width
        return pa.Array.from_buffers(pa.binary(), len(data), [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid * np.int32(width), out=offsets[1:])
    validity = pa.array(valid).buffers()[1]
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())]
    return pa.Array.from_buffers(pa.binary(), len(valid), buffers, null_count=int(len(valid) - valid.sum()))


def signature_matrix(column: pa.Array, num_perm: int) -> np.ndarray:
    """Inverse of fixed_width_binary: uint32[n, num_perm] from a binary column of signatures."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data = column.buffers()[2]
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    flat = np.frombuffer(data, dtype=np.uint32, count=(offsets[-1] - offsets[0]) // 4, offset=int(offsets[0]))
    return flat.reshape(len(column), num_perm)


def snapshot_fingerprints(docs: DataFrame, params: DedupConfig) -> DataFrame:
    """Per snapshot: what its signatures depend on (the set of distinct texts and the MinHash settings).

    Order-independent sums of two 64-bit hashes over the distinct content nodes, as exact decimals.
    """
    distinct = docs.select("snapshot", "node").distinct()
    return distinct.groupBy("snapshot").agg(
        F.count("*").alias("n_texts"),
        F.sum(F.xxhash64("node").cast("decimal(38,0)")).cast("string").alias("digest_a"),
        F.sum(F.hash("node").cast("decimal(38,0)")).cast("string").alias("digest_b"),
        F.lit(signature_key(params)).alias("signature_key"),
    )


def reusable_snapshots(spark: SparkSession, fingerprints: DataFrame, previous: str) -> list[str]:
    """Snapshots whose fingerprints (distinct texts and MinHash settings) equal those the previous dedup output
    stored: their signatures are read back instead of computed."""
    old_fingerprints = spark.read.parquet(f"{previous}/signature_index")
    same = fingerprints.join(old_fingerprints, ["snapshot", "n_texts", "digest_a", "digest_b", "signature_key"])
    return sorted(row.snapshot for row in same.select("snapshot").collect())


def scanned_signatures(per_document: DataFrame) -> DataFrame:
    """The signatures the document scan computed (on the first row of each distinct text of a chunk)."""
    return per_document.filter(F.col("signature").isNotNull()).select(*SIGNATURE_SCHEMA.names)


def signatures_of(fresh: DataFrame, spark: SparkSession, previous: str | None, reused: list[str]) -> DataFrame:
    """The fresh signatures and those of the reused snapshots, read from the previous output."""
    if not reused:
        return fresh
    old = spark.read.schema(SIGNATURE_SCHEMA).parquet(f"{previous}/signatures").filter(F.col("snapshot").isin(reused))
    return fresh.unionByName(old)


# Signature rows as numpy records on their way to the files.
def stored_record(num_perm: int) -> np.dtype:
    return np.dtype([("node", "<i8"), ("has_shingles", "?"), ("signature", "<u4", (num_perm,))])


SIGNATURE_BLOCK_SCHEMA = T.StructType(
    [T.StructField("partition_key", T.LongType()), T.StructField("snapshot", T.StringType()), T.StructField("payload", T.BinaryType())]
)
WRITTEN_SCHEMA = T.StructType([T.StructField("snapshot", T.StringType()), T.StructField("rows", T.LongType())])


def write_signatures(signatures: DataFrame, uri: str, n_files: int) -> None:
    """Spark's partitioned layout, snapshot=<name>/part-NNNNN.parquet, one row per distinct text of the snapshot:
    file NNNNN of every snapshot holds its nodes with node % n_files == NNNNN, sorted by node.

    The rows travel as numpy records packed in blocks (one per batch, snapshot and file) and each file is sorted and
    written by one Python task: a Spark sort, distinct and Parquet write of the 512-byte rows cost twice as much.
    A task holds 1/n_files of the signatures, whatever a snapshot's size.
    """
    spark = signatures.sparkSession
    num_perm = signatures.select(F.length("signature")).filter("signature IS NOT NULL").limit(1).collect()
    store_for(uri).delete_prefix(normalize_uri(uri))
    if not num_perm:
        return
    num_perm = num_perm[0][0] // 4
    keys = placement_keys(spark, n_files)
    blocks = signatures.mapInArrow(signature_file_blocks(num_perm, keys), SIGNATURE_BLOCK_SCHEMA)
    by_file = blocks.repartition(n_files, "partition_key")
    by_file.mapInArrow(write_signature_files(uri, num_perm, n_files), WRITTEN_SCHEMA).collect()


def signature_file_blocks(num_perm: int, partition_keys: list[int]):
    """mapInArrow over signature rows: per batch and snapshot, its records packed by the file they belong to."""
    n_files = len(partition_keys)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            snapshots = pc.dictionary_encode(batch.column("snapshot"))
            codes = snapshots.indices.to_numpy(zero_copy_only=False)
            records = np.empty(batch.num_rows, dtype=stored_record(num_perm))
            records["node"] = batch.column("node").to_numpy(zero_copy_only=False)
            records["has_shingles"] = batch.column("has_shingles").to_numpy(zero_copy_only=False)
            records["signature"] = signature_matrix(batch.column("signature"), num_perm)
            for code, snapshot in enumerate(snapshots.dictionary.to_pylist()):
                mine = records[codes == code]
                file_of = (mine["node"].view(np.uint64) % np.uint64(n_files)).astype(np.int64)
                for keys, payloads in pack_by_partition(mine, file_of, partition_keys):
                    labels = pa.array([snapshot] * len(keys), pa.string())
                    yield pa.RecordBatch.from_arrays([keys, labels, payloads], names=SIGNATURE_BLOCK_SCHEMA.names)

    return compute


def write_signature_files(uri: str, num_perm: int, n_files: int):
    """mapInArrow over one file number's blocks: each snapshot's records sorted by node, once each, written."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        payloads: dict[str, list] = {}
        for batch in batches:
            for snapshot, payload in zip(batch.column("snapshot").to_pylist(), batch.column("payload").to_pylist()):
                payloads.setdefault(snapshot, []).append(payload)
        for snapshot in sorted(payloads):
            records = unpack_records(payloads[snapshot], stored_record(num_perm))
            records = records[np.argsort(records["node"], kind="stable")]
            records = records[first_of_sorted_runs(records["node"])]
            file_number = int(records["node"][0]) % n_files
            table = pa.table(
                {
                    "node": pa.array(records["node"]),
                    "signature": fixed_width_binary(records["signature"]),
                    "has_shingles": pa.array(records["has_shingles"]),
                }
            )
            path = join(uri, f"snapshot={spark_partition_value(snapshot)}", f"part-{file_number:05d}.parquet")
            # Signatures are random bytes: dictionary encoding would only spend time discovering that.
            write_parquet(table, path, use_dictionary=False)
            yield pa.RecordBatch.from_arrays([pa.array([snapshot]), pa.array([len(records)], pa.int64())], names=WRITTEN_SCHEMA.names)

    return compute


def first_of_sorted_runs(values: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run of equal values."""
    mask = np.ones(len(values), dtype=bool)
    mask[1:] = values[1:] != values[:-1]
    return mask


# The characters Spark escapes (as %XX) in a partition directory name (ExternalCatalogUtils.escapePathName).
SPARK_ESCAPED = {chr(c) for c in range(0x01, 0x20)} | set('"#%\'*/:=?\\\x7f{[]^')
SPARK_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def spark_partition_value(value: str | None) -> str:
    """A partition value as Spark writes it in a directory name (null and empty both as Hive's default)."""
    if not value:
        return SPARK_NULL_PARTITION
    return "".join(f"%{ord(c):02X}" if c in SPARK_ESCAPED else c for c in value)


def store_signatures(
    fresh: DataFrame, fingerprints: DataFrame, output_uri: str, previous: str | None, reused: list[str]
) -> None:
    """signatures/ per snapshot, for the next refresh, and signature_index/ telling which snapshot they cover.

    Only the fresh signatures are written; each reused snapshot's file is taken over from the previous output as it
    is (a reference where the store has one): written again, the same rows would give the same bytes.
    """
    uri = f"{output_uri}/signatures"
    write_signatures(fresh, uri, fresh.sparkSession.sparkContext.defaultParallelism)
    for source, relative in reused_signature_files(previous, reused):
        store_for(uri).copy(source, join(uri, relative))
    # The distinct (snapshot, text) pairs of the documents are those the signatures hold, reused or not.
    write_deterministic_parquet(fingerprints, f"{output_uri}/signature_index", 1, ["snapshot"])


def reused_signature_files(previous: str | None, reused: list[str]) -> list[tuple[str, str]]:
    """(URI, path relative to signatures/) of the previous output's files for the reused snapshots."""
    if not reused:
        return []
    folder = normalize_uri(f"{previous}/signatures")
    found = []
    for info in store_for(folder).list_files(folder):
        relative = info.uri[len(folder) + 1 :]
        directory, _, name = relative.partition("/")
        if name.startswith("part-") and snapshot_of_directory(directory) in reused:
            found.append((info.uri, relative))
    missing = set(reused) - {snapshot_of_directory(relative.partition("/")[0]) for _, relative in found}
    if missing:
        raise RuntimeError(f"previous dedup output {previous} holds no signature files for snapshot(s) {sorted(missing)}")
    return found


def snapshot_of_directory(directory: str) -> str:
    """Spark names a partition directory snapshot=<value>, the value's special characters %-escaped."""
    return unquote(directory.partition("=")[2])
