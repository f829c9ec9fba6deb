"""Step 3: candidate pairs from LSH buckets, each checked against the MinHash-estimated Jaccard threshold."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data import minhash
from xgen_core.data.dedup.signatures import fixed_width_binary, signature_matrix
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

    A pair sharing several bands can come from buckets in several partitions: those copies remain (verified_edges
    drops them before checking; connected components does not mind them).
    """
    keys = placement_keys(signatures.sparkSession, partitions)
    blocks = signatures.filter("has_shingles").select("node", "signature").mapInArrow(band_blocks(params, keys), BLOCK_SCHEMA)
    by_bucket = blocks.repartition(partitions, "partition_key")
    return by_bucket.mapInArrow(bucket_neighbour_batches, EDGE_SCHEMA)


# Rows keyed by a node: its signature (kind 0), or an edge from it to `other` (kind 1, with other's signature once
# known). Sorted by (key, kind), a node's signature comes right before its edges.
KEYED_SCHEMA = T.StructType(
    [
        T.StructField("key", T.LongType()),
        T.StructField("kind", T.ByteType()),
        T.StructField("other", T.LongType()),
        T.StructField("signature", T.BinaryType()),
    ]
)
SIGNATURE_ROW, EDGE_ROW = 0, 1
NO_NODE = -1  # nodes are 60-bit content hashes, never negative


def verified_edges(edges: DataFrame, node_signatures: DataFrame, params: DedupConfig, partitions: int) -> DataFrame:
    """The distinct candidate edges whose MinHash-estimated Jaccard similarity reaches the threshold.

    A join by hand, in two sorted exchanges: edges meet their src's signature, then their dst's, and are checked
    there. Spark's own joins would first need the signatures deduplicated by node (a sort-based aggregation, the
    signatures being binary), the edges made distinct (another exchange), and a sort per join.
    """
    signature_rows = node_signatures.select(
        F.col("node").alias("key"), F.lit(SIGNATURE_ROW).cast("byte").alias("kind"), F.lit(NO_NODE).alias("other"), "signature"
    )
    edge_rows = edges.select(
        F.col("src").alias("key"), F.lit(EDGE_ROW).cast("byte").alias("kind"), F.col("dst").alias("other"), F.lit(None).cast("binary").alias("signature")
    )
    by_src = sorted_by_key(signature_rows.unionByName(edge_rows), partitions).mapInArrow(attach_key_signature(params), KEYED_SCHEMA)
    by_dst = sorted_by_key(signature_rows.unionByName(by_src), partitions)
    return by_dst.mapInArrow(check_edges(params), EDGE_SCHEMA)


def sorted_by_key(rows: DataFrame, partitions: int) -> DataFrame:
    return rows.repartition(partitions, "key").sortWithinPartitions("key", "kind", "other")


def keyed_edges(batches: Iterator[pa.RecordBatch], num_perm: int) -> Iterator[tuple[pa.RecordBatch, np.ndarray, np.ndarray]]:
    """Over a partition sorted by (key, kind, other): per batch, the distinct edge rows whose key has a signature
    row, as (those rows, the key's signature for each, uint32[n, num_perm]), and their positions in the batch.

    A key's signature row may sit in an earlier batch than its edges: the last one seen is carried over. Repeated
    signature rows of one node (a text in several chunks or snapshots) are identical; repeated edges are dropped.
    """
    carried_key, carried_signature = NO_NODE, None
    last_edge = (NO_NODE, NO_NODE)
    for batch in batches:
        if batch.num_rows == 0:
            continue
        key, kind, other = (batch.column(name).to_numpy() for name in ("key", "kind", "other"))
        signature_positions = np.flatnonzero(kind == SIGNATURE_ROW)
        signatures = np.zeros((0, num_perm), dtype=np.uint32)
        if len(signature_positions):
            signatures = signature_matrix(batch.column("signature").take(pa.array(signature_positions)), num_perm)
        edges = np.flatnonzero(kind == EDGE_ROW)
        # The last signature row at or before each edge row, if it has the edge's key.
        last_signature = np.searchsorted(signature_positions, edges, side="right") - 1
        in_batch = last_signature >= 0
        in_batch[in_batch] = key[signature_positions[last_signature[in_batch]]] == key[edges[in_batch]]
        carried = ~in_batch & (key[edges] == carried_key)
        fresh = first_of_runs(key[edges], other[edges])
        if len(edges) and (int(key[edges[0]]), int(other[edges[0]])) == last_edge:
            fresh[0] = False
        keep = (in_batch | carried) & fresh
        key_signature = np.empty((len(edges), num_perm), dtype=np.uint32)
        key_signature[in_batch] = signatures[last_signature[in_batch]]
        if carried.any():
            key_signature[carried] = carried_signature
        if len(signature_positions):
            carried_key, carried_signature = int(key[signature_positions[-1]]), signatures[-1]
        if len(edges):
            last_edge = (int(key[edges[-1]]), int(other[edges[-1]]))
        if keep.any():
            yield batch, key_signature[keep], edges[keep]


def attach_key_signature(params: DedupConfig):
    """mapInArrow by src: each distinct edge once, keyed by its dst, carrying its src's signature."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch, key_signature, edges in keyed_edges(batches, params.num_perm):
            yield pa.RecordBatch.from_arrays(
                [
                    batch.column("other").take(pa.array(edges)),
                    pa.array(np.full(len(edges), EDGE_ROW, dtype=np.int8)),
                    batch.column("key").take(pa.array(edges)),
                    fixed_width_binary(key_signature),
                ],
                names=KEYED_SCHEMA.names,
            )

    return compute


def check_edges(params: DedupConfig):
    """mapInArrow by dst: (src, dst) of the edges whose two signatures agree on a share >= the threshold."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch, key_signature, edges in keyed_edges(batches, params.num_perm):
            other_signature = signature_matrix(batch.column("signature").take(pa.array(edges)), params.num_perm)
            similar = minhash.estimated_jaccard(key_signature, other_signature) >= params.threshold
            src, dst = batch.column("other").take(pa.array(edges[similar])), batch.column("key").take(pa.array(edges[similar]))
            yield pa.RecordBatch.from_arrays([src, dst], names=["src", "dst"])

    return compute
