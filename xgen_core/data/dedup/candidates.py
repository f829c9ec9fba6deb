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
# Members before each bucket member (in node order) it is paired with.
BUCKET_NEIGHBOURS = 3


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


def bucket_neighbour_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow over a partition's blocks, which hold whole buckets: each bucket's candidate pairs (one numpy sort
    of the partition's (band_key, node) pairs)."""
    blocks = [block for batch in batches for block in batch.column("pairs").to_pylist()]
    if not blocks:
        return
    pairs = np.frombuffer(b"".join(blocks), dtype=np.int64).reshape(-1, 2)
    src, dst = bucket_neighbour_pairs(pairs[:, 0], pairs[:, 1])
    yield pa.RecordBatch.from_arrays([pa.array(src, pa.int64()), pa.array(dst, pa.int64())], names=["src", "dst"])


def bucket_neighbour_pairs(key: np.ndarray, node: np.ndarray, neighbours: int = BUCKET_NEIGHBOURS):
    """Distinct (src, dst), src > dst: each member of a bucket (the nodes sharing a key) paired with the
    `neighbours` members before it in node order.

    Pairing with the bucket's smallest node alone loses true pairs once the check drops edges: in an edit history a
    version resembles its neighbours, not necessarily the bucket minimum. A few neighbours per member keep the count
    linear in bucket size (a bucket of 10,000 near copies would give 50M pairs) and, on generated edit chains and
    trees, connect what checking all pairs in each bucket connects.
    """
    order = np.lexsort((node, key))
    key, node = key[order], node[order]
    # A text stored for several snapshots appears once per snapshot in its buckets: one member each.
    fresh = first_of_runs(key, node)
    key, node = key[fresh], node[fresh]
    src = [node[distance:][key[distance:] == key[:-distance]] for distance in range(1, neighbours + 1)]
    dst = [node[:-distance][key[distance:] == key[:-distance]] for distance in range(1, neighbours + 1)]
    src, dst = np.concatenate(src), np.concatenate(dst)
    # A pair sharing several bands comes from several buckets.
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    fresh = first_of_runs(src, dst)
    return src[fresh], dst[fresh]


def first_of_runs(*sorted_columns: np.ndarray) -> np.ndarray:
    """Mask of the rows where any column differs from the previous row (the first row always)."""
    n = len(sorted_columns[0])
    mask = np.zeros(n, dtype=bool)
    mask[:1] = True
    for column in sorted_columns:
        mask[1:] |= column[1:] != column[:-1]
    return mask


def candidate_edges(signatures: DataFrame, params: DedupConfig, partitions: int) -> DataFrame:
    """Edges (src, dst), src > dst: every member of an LSH bucket paired with its neighbours in the bucket.

    A pair sharing several bands gives the same edge in several partitions: the final distinct absorbs it.
    """
    keys = placement_keys(signatures.sparkSession, partitions)
    blocks = signatures.filter("has_shingles").select("node", "signature").mapInArrow(band_blocks(params, keys), BLOCK_SCHEMA)
    by_bucket = blocks.repartition(partitions, "partition_key")
    return by_bucket.mapInArrow(bucket_neighbour_batches, EDGE_SCHEMA).distinct()


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
