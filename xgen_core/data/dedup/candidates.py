"""Step 3: candidate pairs from LSH buckets, each checked against the MinHash-estimated Jaccard threshold.

Everything here travels through Spark as packed binary blocks (BLOCK_SCHEMA: one row per batch and target partition,
holding many numpy records), and is unpacked, sorted and looked up in numpy inside Python tasks: Spark moves a few
large rows instead of one per (document, band), per signature or per edge. Four kinds of block:
  BANDS              (band key, node), routed by band key: a partition holds whole buckets
  SIGNATURES         (node, sketch of its signature), routed by node
  EDGES              (src, dst), src > dst, routed by src (candidate pairs), then by dst (with their src's sketch)
  SOURCE_SIGNATURES  (node, sketch) of the srcs of the EDGES blocks routed by dst, sent along with them
A partition's records are all in memory in its task (as its rows would be in a Spark sort): its buckets, or its
signatures and edges.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data import minhash
from xgen_core.data.sparkio import first_of_runs, pack_by_partition, signature_matrix, unpack_records


BLOCK_SCHEMA = T.StructType(
    [
        T.StructField("partition_key", T.LongType()),
        T.StructField("kind", T.ByteType()),
        T.StructField("payload", T.BinaryType()),
    ]
)
BANDS, SIGNATURES, EDGES, SOURCE_SIGNATURES = 0, 1, 2, 3
EDGE_SCHEMA = T.StructType([T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())])
BAND_RECORD = np.dtype([("key", "<i8"), ("node", "<i8")])
EDGE_RECORD = np.dtype([("src", "<i8"), ("dst", "<i8")])
# Members before each bucket member (in node order) it is paired with.
BUCKET_NEIGHBOURS = 3
# The check compares the low 16 bits of each signature value (a b-bit MinHash sketch): half the bytes to move. Two
# different values agree there with probability 2^-16, so the share of agreeing values overestimates the full
# signatures' by (1 - share) * 2^-16 on average, under a thousandth of one value's weight at 128 permutations:
# the threshold is applied to the raw share, which is the full share rounded to the nearest count.
SKETCH = np.dtype("<u2")


def sketch_record(num_perm: int) -> np.dtype:
    return np.dtype([("node", "<i8"), ("sketch", SKETCH, (num_perm,))])


def packed(kind: int, records: np.ndarray, target: np.ndarray, partition_keys: list[int]) -> Iterator[pa.RecordBatch]:
    """Records of one kind as BLOCK_SCHEMA batches, routed to their target partitions."""
    for keys, blocks in pack_by_partition(records, target, partition_keys):
        kinds = pa.array(np.full(len(keys), kind, dtype=np.int8))
        yield pa.RecordBatch.from_arrays([keys, kinds, blocks], names=BLOCK_SCHEMA.names)


def node_partition(nodes: np.ndarray, n_partitions: int) -> np.ndarray:
    """The partition a node's signature and the edges from (or to) it are routed to."""
    return (nodes.view(np.uint64) % np.uint64(n_partitions)).astype(np.int64)


def graph_blocks(
    nodes: np.ndarray, signatures: np.ndarray, params: DedupConfig, partition_keys: list[int], with_sketches: bool
) -> Iterator[pa.RecordBatch]:
    """BLOCK_SCHEMA batches for signed texts (nodes with shingles only): their (band key, node) pairs as BANDS
    blocks and, when the check follows, their (node, sketch) records as SIGNATURES blocks.

    Every document lands in `bands` buckets; shuffling one Spark row per (document, band) costs more than the
    banding itself, so the pairs travel as a few large blocks, routed by band key, and are unpacked in numpy.
    """
    if len(nodes) == 0:
        return
    bands, rows = minhash.lsh_params(params.threshold, params.num_perm)
    n_partitions = len(partition_keys)
    pairs = np.empty(len(nodes) * bands, dtype=BAND_RECORD)
    pairs["key"] = minhash.band_keys(signatures, bands, rows).reshape(-1)
    pairs["node"] = np.repeat(nodes, bands)
    target = (pairs["key"].view(np.uint64) % np.uint64(n_partitions)).astype(np.int64)
    yield from packed(BANDS, pairs, target, partition_keys)
    if with_sketches:
        sketches = np.empty(len(nodes), dtype=sketch_record(params.num_perm))
        sketches["node"] = nodes
        sketches["sketch"] = signatures.astype(SKETCH)  # the low bits
        yield from packed(SIGNATURES, sketches, node_partition(nodes, n_partitions), partition_keys)


def signature_blocks(params: DedupConfig, partition_keys: list[int]):
    """mapInArrow over (node, signature, has_shingles) rows (signatures read back from a previous output): their
    graph_blocks, per batch."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            signed = batch.column("has_shingles").to_numpy(zero_copy_only=False)
            nodes = batch.column("node").to_numpy()[signed]
            signatures = signature_matrix(batch.column("signature"), params.num_perm)[signed]
            yield from graph_blocks(nodes, signatures, params, partition_keys, with_sketches=params.verify_jaccard)

    return compute


def payloads_by_kind(batches: Iterator[pa.RecordBatch]) -> dict[int, list]:
    """A partition's block payloads (zero-copy buffers), grouped by kind."""
    found: dict[int, list] = {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        kinds = batch.column("kind").to_numpy()
        payload = batch.column("payload")
        offsets = np.frombuffer(payload.buffers()[1], dtype=np.int32)[payload.offset : payload.offset + len(payload) + 1]
        data = memoryview(payload.buffers()[2] or b"")
        for row, kind in enumerate(kinds.tolist()):
            found.setdefault(kind, []).append(data[offsets[row] : offsets[row + 1]])
    return found


def bucket_edge_blocks(partition_keys: list[int]):
    """mapInArrow over a partition's BANDS blocks, which hold whole buckets: each bucket's candidate pairs, as EDGES
    blocks routed by src."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        pairs = unpack_records(payloads_by_kind(batches).get(BANDS, []), BAND_RECORD)
        if len(pairs) == 0:
            return
        src, dst = bucket_neighbour_pairs(pairs["key"], pairs["node"])
        yield from packed_edges(src, dst, node_partition(src, len(partition_keys)), partition_keys)

    return compute


def packed_edges(src: np.ndarray, dst: np.ndarray, target: np.ndarray, partition_keys: list[int]) -> Iterator[pa.RecordBatch]:
    edges = np.empty(len(src), dtype=EDGE_RECORD)
    edges["src"], edges["dst"] = src, dst
    return packed(EDGES, edges, target, partition_keys)


def bucket_neighbour_pairs(key: np.ndarray, node: np.ndarray, neighbours: int = BUCKET_NEIGHBOURS):
    """Distinct (src, dst), src > dst: each member of a bucket (the nodes sharing a key) paired with the
    `neighbours` members before it in node order.

    Pairing with the bucket's smallest node alone loses true pairs once the check drops edges: in an edit history a
    version resembles its neighbours, not necessarily the bucket minimum. A few neighbours per member keep the count
    linear in bucket size (a bucket of 10,000 near copies would give 50M pairs) and, on generated edit chains and
    trees, connect what checking all pairs in each bucket connects.

    Keys and nodes are replaced by small codes (hashing, linear time), a node's code being its rank: then a bucket
    member and a pair are each one 64-bit number, and the two sorts are plain sorts of numbers, several times faster
    than sorting positions by two columns.
    """
    bucket, _ = pd.factorize(key)
    # Most buckets hold one document: only the shared ones are sorted.
    shared = np.bincount(bucket)[bucket] > 1
    bucket, (rank, nodes) = bucket[shared], pd.factorize(node[shared], sort=True)
    bits = max(1, (len(nodes) - 1).bit_length())
    if bits > 32 or int(bucket.max(initial=0)).bit_length() > 64 - bits:
        raise ValueError(f"{len(key)} bucket entries in one partition: too many to code in 64 bits, use more partitions")
    members = np.sort((bucket.astype(np.uint64) << np.uint64(bits)) | rank.astype(np.uint64))
    # A text stored for several snapshots appears once per snapshot in its buckets: one member each.
    members = members[first_of_runs(members)]
    bucket, rank = members >> np.uint64(bits), members & np.uint64((1 << bits) - 1)
    src = np.concatenate([rank[d:][bucket[d:] == bucket[:-d]] for d in range(1, neighbours + 1)])
    dst = np.concatenate([rank[:-d][bucket[d:] == bucket[:-d]] for d in range(1, neighbours + 1)])
    # A pair sharing several bands comes from several buckets.
    pairs = np.sort((src << np.uint64(bits)) | dst)
    pairs = pairs[first_of_runs(pairs)]
    return nodes[(pairs >> np.uint64(bits)).astype(np.int64)], nodes[(pairs & np.uint64((1 << bits) - 1)).astype(np.int64)]


def distinct_pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (src, dst) pairs, sorted by src then dst."""
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    fresh = first_of_runs(src, dst)
    return src[fresh], dst[fresh]


class SketchTable:
    """Sketches by node, from SIGNATURE(-like) records: a text signed in several chunks or snapshots appears several
    times, with the same signature; it is kept once."""

    def __init__(self, records: np.ndarray):
        records = records[np.argsort(records["node"], kind="stable")]
        records = records[first_of_runs(records["node"])]
        self.nodes, self.sketches = records["node"], records["sketch"]

    def find(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, row of each found node in self.sketches)."""
        if len(self.nodes) == 0:
            return np.zeros(len(nodes), dtype=bool), np.zeros(0, dtype=np.int64)
        row = np.minimum(np.searchsorted(self.nodes, nodes), len(self.nodes) - 1)
        found = self.nodes[row] == nodes
        return found, row[found]


def blocks_and_edges(batches: Iterator[pa.RecordBatch]) -> tuple[dict[int, list], np.ndarray]:
    """A partition's block payloads by kind, and its EDGES records unpacked."""
    payloads = payloads_by_kind(batches)
    return payloads, unpack_records(payloads.get(EDGES, []), EDGE_RECORD)


def attach_source_sketches(params: DedupConfig, partition_keys: list[int]):
    """mapInArrow over a partition's SIGNATURES and EDGES blocks (routed by node, and by src): each distinct edge
    whose src is signed, routed by dst as EDGES blocks, with the sketches of their srcs as SOURCE_SIGNATURES blocks
    (one per src and target partition, however many edges it has there)."""
    record = sketch_record(params.num_perm)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        payloads, edges = blocks_and_edges(batches)
        if len(edges) == 0:
            return
        # Pairs found in buckets of several partitions meet here, at their src: each is kept once.
        src, dst = distinct_pairs(edges["src"], edges["dst"])
        table = SketchTable(unpack_records(payloads.get(SIGNATURES, []), record))
        signed, row = table.find(src)
        src, dst = src[signed], dst[signed]
        target = node_partition(dst, len(partition_keys))
        yield from packed_edges(src, dst, target, partition_keys)
        # src is sorted: (target, src) pairs are distinct where they start a run once sorted by target.
        order = np.argsort(target, kind="stable")
        first = first_of_runs(target[order], src[order])
        sources = np.empty(int(first.sum()), dtype=record)
        sources["node"] = src[order][first]
        sources["sketch"] = table.sketches[row[order][first]]
        yield from packed(SOURCE_SIGNATURES, sources, target[order][first], partition_keys)

    return compute


def check_edges(params: DedupConfig):
    """mapInArrow over a partition's SIGNATURES, SOURCE_SIGNATURES and EDGES blocks (routed by dst): (src, dst) of
    the edges whose two sketches agree on a share >= the threshold, as rows."""
    record = sketch_record(params.num_perm)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        payloads, edges = blocks_and_edges(batches)
        if len(edges) == 0:
            return
        src, dst = edges["src"], edges["dst"]
        destinations = SketchTable(unpack_records(payloads.get(SIGNATURES, []), record))
        sources = SketchTable(unpack_records(payloads.get(SOURCE_SIGNATURES, []), record))
        dst_found, dst_row = destinations.find(dst)
        src, dst = src[dst_found], dst[dst_found]
        src_found, src_row = sources.find(src)
        src, dst, dst_row = src[src_found], dst[src_found], dst_row[src_found]
        similar = np.zeros(len(src), dtype=bool)
        # In slices: the two gathered sketch matrices of a slice stay a few MiB.
        for start in range(0, len(src), 65536):
            part = slice(start, start + 65536)
            similar[part] = (
                minhash.estimated_jaccard(sources.sketches[src_row[part]], destinations.sketches[dst_row[part]])
                >= params.threshold
            )
        yield pa.RecordBatch.from_arrays([pa.array(src[similar]), pa.array(dst[similar])], names=EDGE_SCHEMA.names)

    return compute


def edge_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow: EDGES blocks as (src, dst) rows."""
    _, edges = blocks_and_edges(batches)
    if len(edges):
        yield pa.RecordBatch.from_arrays([pa.array(edges["src"]), pa.array(edges["dst"])], names=EDGE_SCHEMA.names)


def signature_rows_as_blocks(signatures: DataFrame, params: DedupConfig, partition_keys: list[int]) -> DataFrame:
    """Signature rows (node, signature, has_shingles) as the graph's BLOCK_SCHEMA blocks, not yet routed."""
    return signatures.select("node", "signature", "has_shingles").mapInArrow(signature_blocks(params, partition_keys), BLOCK_SCHEMA)


def routed_signatures(blocks: DataFrame, params: DedupConfig, partition_keys: list[int]) -> DataFrame:
    """The BANDS and (with the check) SIGNATURES blocks, in the partitions they are routed to.

    With the check they are checkpointed there: the blocks are shuffled once, and each later step that unions them
    with blocks partitioned the same way reads them where they are (Spark keeps the partitioning of a union of
    identically partitioned frames, so no exchange moves them again).
    """
    graph_kinds = blocks.filter(F.col("kind").isin(BANDS, SIGNATURES)).select(*BLOCK_SCHEMA.names)
    routed = in_their_partitions(len(partition_keys), graph_kinds)
    return routed.localCheckpoint() if params.verify_jaccard else routed


def in_their_partitions(n_partitions: int, *frames: DataFrame) -> DataFrame:
    """The union of block frames, every block in the partition its key is placed on. A frame already partitioned
    that way (a checkpoint of routed blocks) is not shuffled again."""
    routed = [frame.repartition(n_partitions, "partition_key") for frame in frames]
    union = routed[0]
    for frame in routed[1:]:
        union = union.unionByName(frame)
    return union.repartition(n_partitions, "partition_key")


def of_kind(blocks: DataFrame, kind: int) -> DataFrame:
    return blocks.filter(F.col("kind") == kind)


def candidate_blocks(routed: DataFrame, partition_keys: list[int]) -> DataFrame:
    """EDGES blocks routed by src: every member of an LSH bucket paired with its neighbours in the bucket.

    A pair sharing several bands can come from buckets in several partitions: those copies remain (the check drops
    them before checking; connected components does not mind them).
    """
    by_bucket = in_their_partitions(len(partition_keys), of_kind(routed, BANDS))
    return by_bucket.mapInArrow(bucket_edge_blocks(partition_keys), BLOCK_SCHEMA)


def verified_edges(candidates: DataFrame, routed: DataFrame, params: DedupConfig, partition_keys: list[int]) -> DataFrame:
    """The distinct candidate edges whose MinHash-estimated Jaccard similarity reaches the threshold, as rows.

    A join by hand, in two exchanges of edge blocks: edges meet their src's sketch (by src), then, carrying it,
    their dst's (by dst), and are checked there. The signature blocks stay where routed_signatures put them.
    """
    n_partitions = len(partition_keys)
    signatures = of_kind(routed, SIGNATURES)
    by_src = in_their_partitions(n_partitions, signatures, candidates)
    with_sources = by_src.mapInArrow(attach_source_sketches(params, partition_keys), BLOCK_SCHEMA)
    by_dst = in_their_partitions(n_partitions, signatures, with_sources)
    return by_dst.mapInArrow(check_edges(params), EDGE_SCHEMA)


def graph_edges(blocks: DataFrame, params: DedupConfig, partition_keys: list[int]) -> DataFrame:
    """(src, dst) rows for connected components, from the signed texts' graph_blocks (placed for partition_keys):
    the candidate pairs, checked when params.verify_jaccard."""
    routed = routed_signatures(blocks, params, partition_keys)
    candidates = candidate_blocks(routed, partition_keys)
    if params.verify_jaccard:
        return verified_edges(candidates, routed, params, partition_keys)
    return candidates.mapInArrow(edge_rows, EDGE_SCHEMA)
