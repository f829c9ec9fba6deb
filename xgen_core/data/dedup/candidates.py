"""Step 3: candidate pairs from LSH buckets, each checked against the MinHash-estimated Jaccard threshold."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data import minhash
from xgen_core.data.dedup.signatures import signature_matrix
from xgen_core.data.sparkio import placement_keys


BLOCK_SCHEMA = T.StructType([T.StructField("partition_key", T.LongType()), T.StructField("pairs", T.BinaryType())])
EDGE_SCHEMA = T.StructType([T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())])


def band_blocks(params: DedupConfig, partition_keys: list[int]):
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


def candidate_edges(signatures: DataFrame, params: DedupConfig, partitions: int) -> DataFrame:
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


def verify_batches(params: DedupConfig):
    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            left = signature_matrix(batch.column("src_signature"), params.num_perm)
            right = signature_matrix(batch.column("dst_signature"), params.num_perm)
            similar = minhash.estimated_jaccard(left, right) >= params.threshold
            yield batch.select(["src", "dst"]).filter(pa.array(similar))

    return compute


def verified_edges(edges: DataFrame, node_signatures: DataFrame, params: DedupConfig) -> DataFrame:
    """Keep candidate edges whose MinHash-estimated Jaccard similarity reaches the threshold."""
    sigs = node_signatures.select("node", "signature")
    joined = edges.join(sigs.withColumnsRenamed({"node": "src", "signature": "src_signature"}), "src").join(
        sigs.withColumnsRenamed({"node": "dst", "signature": "dst_signature"}), "dst"
    )
    return joined.select("src", "dst", "src_signature", "dst_signature").mapInArrow(verify_batches(params), EDGE_SCHEMA)
