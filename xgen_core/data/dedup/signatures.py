"""Step 2: MinHash signatures, one per distinct text, stored per snapshot and reused by the next refresh."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data import minhash
from xgen_core.data.dedup.candidates import BLOCK_SCHEMA, graph_blocks, signature_rows_as_blocks
from xgen_core.data.doc_chunks import write_parquet
from xgen_core.data.sparkio import (
    first_of_runs, fixed_width_binary, pack_by_partition, unpack_records, write_deterministic_parquet,
)  # fmt: skip
from xgen_core.storage import join, normalize_uri, store_for

# Bump when the shingling or signature layout changes: stored signatures from another version are not reused.
SIGNATURE_VERSION = 2
# Distinct texts hashed per numpy call (the same batch size the scan uses for its Arrow batches).
SIGNATURE_BATCH = 8192


def signature_key(params: DedupConfig) -> str:
    """What stored signatures depend on besides the texts: the version and the MinHash settings."""
    return f"v{SIGNATURE_VERSION}-n{params.ngram}-p{params.num_perm}-s{params.seed}-{params.hash_scheme}"


def minhash_rows(texts: pa.Array, rows: np.ndarray, params: DedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(uint32[len(rows), num_perm], has_shingles bool[len(rows)]) for texts[rows], SIGNATURE_BATCH texts per call."""
    sigs = np.empty((len(rows), params.num_perm), dtype=np.uint32)
    has_shingles = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), SIGNATURE_BATCH):
        part = texts.take(pa.array(rows[start : start + SIGNATURE_BATCH]))
        sigs[start : start + len(part)], has_shingles[start : start + len(part)] = minhash.signatures(
            part, params.ngram, params.num_perm, params.seed, scheme=params.hash_scheme
        )
    return sigs, has_shingles


# The kind of the blocks that carry full signatures to signatures/ (the graph's kinds are in candidates).
STORED = 4
STORED_BLOCK_SCHEMA = T.StructType([*BLOCK_SCHEMA.fields, T.StructField("snapshot", T.StringType())])
# Rows signed per slice of a scan task: it holds a slice's signatures and blocks at a time, not its chunk's.
SIGNING_SLICE = 4 * SIGNATURE_BATCH


@dataclass(frozen=True)
class Signing:
    """What a scan task needs to hand on the signatures it computes without Spark rows of them: the placement keys
    of the graph's partitions (BANDS, SIGNATURES blocks) and of the files of signatures/ (STORED blocks), and the
    snapshots a refresh reuses (not signed again)."""

    params: DedupConfig
    graph_keys: tuple[int, ...]
    file_keys: tuple[int, ...]
    reused: frozenset[str] = frozenset()


def signed_blocks(signing: Signing, texts: pa.Array, rows: np.ndarray, nodes: np.ndarray, snapshots: pa.Array) -> Iterator[pa.RecordBatch]:
    """STORED_BLOCK_SCHEMA batches for texts[rows] (the rows to sign: one per distinct (snapshot, node), ascending):
    each distinct text is signed once; its graph_blocks if it has shingles, and a STORED record per (snapshot, node)."""
    params = signing.params
    labels = pc.dictionary_encode(snapshots)
    codes, names = labels.indices.to_numpy(zero_copy_only=False), labels.dictionary.to_pylist()
    for start in range(0, len(rows), SIGNING_SLICE):
        part = rows[start : start + SIGNING_SLICE]
        distinct, first, inverse = np.unique(nodes[part], return_index=True, return_inverse=True)
        sigs, has_shingles = minhash_rows(texts, part[first], params)
        graph = graph_blocks(distinct[has_shingles], sigs[has_shingles], params, list(signing.graph_keys), params.verify_jaccard)
        for batch in graph:
            yield batch.append_column("snapshot", pa.nulls(batch.num_rows, pa.string()))
        records = np.empty(len(part), dtype=stored_record(params.num_perm))
        records["node"], records["has_shingles"], records["signature"] = nodes[part], has_shingles[inverse], sigs[inverse]
        yield from stored_blocks(records, codes[part], names, list(signing.file_keys))


def stored_blocks(records: np.ndarray, codes: np.ndarray, names: list[str], file_keys: list[int]) -> Iterator[pa.RecordBatch]:
    """STORED_BLOCK_SCHEMA batches: the records of each snapshot (names[code]) packed by the file they belong to."""
    n_files = len(file_keys)
    for code in np.unique(codes).tolist():
        mine = records[codes == code]
        file_of = (mine["node"].view(np.uint64) % np.uint64(n_files)).astype(np.int64)
        for keys, payloads in pack_by_partition(mine, file_of, file_keys):
            kinds = pa.array(np.full(len(keys), STORED, dtype=np.int8))
            labels = pa.array([names[code]] * len(keys), pa.string())
            yield pa.RecordBatch.from_arrays([keys, kinds, payloads, labels], names=STORED_BLOCK_SCHEMA.names)


def stored_count(blocks: DataFrame, num_perm: int) -> int:
    """How many (snapshot, text) signatures the STORED blocks of `blocks` hold."""
    stored_bytes = blocks.filter(F.col("kind") == STORED).agg(F.sum(F.length("payload"))).first()[0] or 0
    return stored_bytes // stored_record(num_perm).itemsize


SIGNATURE_SCHEMA = T.StructType(
    [
        T.StructField("snapshot", T.StringType()),
        T.StructField("node", T.LongType()),
        T.StructField("signature", T.BinaryType()),
        T.StructField("has_shingles", T.BooleanType()),
    ]
)


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


def signatures_of(fresh: DataFrame, spark: SparkSession, previous: str | None, reused: list[str], signing: Signing) -> DataFrame:
    """The graph's blocks (BLOCK_SCHEMA) of the fresh signatures and of the reused snapshots' (read from the
    previous output)."""
    blocks = fresh.select(*BLOCK_SCHEMA.names)
    if not reused:
        return blocks
    old = spark.read.schema(SIGNATURE_SCHEMA).parquet(f"{previous}/signatures").filter(F.col("snapshot").isin(reused))
    return blocks.unionByName(signature_rows_as_blocks(old, signing.params, list(signing.graph_keys)))


# Signature rows as numpy records on their way to the files.
def stored_record(num_perm: int) -> np.dtype:
    return np.dtype([("node", "<i8"), ("has_shingles", "?"), ("signature", "<u4", (num_perm,))])


WRITTEN_SCHEMA = T.StructType([T.StructField("snapshot", T.StringType()), T.StructField("rows", T.LongType())])


def write_signature_blocks(blocks: DataFrame, uri: str, n_files: int, num_perm: int) -> None:
    """The STORED blocks of `blocks` (placed for n_files files) in Spark's partitioned layout,
    snapshot=<name>/part-NNNNN.parquet, one row per distinct text of the snapshot: file NNNNN of every snapshot holds
    its nodes with node % n_files == NNNNN, sorted by node.

    Each file is sorted and written by one Python task from numpy records: a Spark sort, distinct and Parquet write
    of 512-byte rows cost twice as much. A task holds 1/n_files of the signatures, whatever a snapshot's size.
    """
    store_for(uri).delete_prefix(normalize_uri(uri))
    stored = blocks.filter(F.col("kind") == STORED).select("partition_key", "snapshot", "payload")
    by_file = stored.repartition(n_files, "partition_key")
    by_file.mapInArrow(write_signature_files(uri, num_perm, n_files), WRITTEN_SCHEMA).collect()


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
            records = records[first_of_runs(records["node"])]
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


# The characters Spark escapes (as %XX) in a partition directory name (ExternalCatalogUtils.escapePathName).
SPARK_ESCAPED = {chr(c) for c in range(0x01, 0x20)} | set('"#%\'*/:=?\\\x7f{[]^')
SPARK_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


def spark_partition_value(value: str | None) -> str:
    """A partition value as Spark writes it in a directory name (null and empty both as Hive's default)."""
    if not value:
        return SPARK_NULL_PARTITION
    return "".join(f"%{ord(c):02X}" if c in SPARK_ESCAPED else c for c in value)


def store_signatures(
    fresh: DataFrame, fingerprints: DataFrame, output_uri: str, previous: str | None, reused: list[str], signing: Signing
) -> None:
    """signatures/ per snapshot, for the next refresh, and signature_index/ telling which snapshot they cover.

    Only the fresh signatures (the STORED blocks of `fresh`) are written; each reused snapshot's file is taken over
    from the previous output as it is (a reference where the store has one): written again, the same rows would
    give the same bytes.
    """
    uri = f"{output_uri}/signatures"
    write_signature_blocks(fresh, uri, len(signing.file_keys), signing.params.num_perm)
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
