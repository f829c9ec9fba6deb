"""Step 3: candidate pairs from LSH buckets, each checked against the MinHash-estimated Jaccard threshold."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import DedupConfig
from xgen_core.data import minhash
from xgen_core.data.dedup.signatures import fixed_width_binary, signature_key, signature_matrix
from xgen_core.data.sparkio import placement_keys, write_deterministic_parquet
from xgen_core.storage import join, store_for


BLOCK_SCHEMA = T.StructType([T.StructField("partition_key", T.LongType()), T.StructField("pairs", T.BinaryType())])
EDGE_SCHEMA = T.StructType([T.StructField("src", T.LongType()), T.StructField("dst", T.LongType())])
CANDIDATE_SCHEMA = T.StructType([*EDGE_SCHEMA.fields, T.StructField("old_pair", T.BooleanType())])
# Nodes are 60-bit content hashes: bit 62 is free to carry the node's old flag through the band blocks.
OLD_BIT = 62
NODE_MASK = (1 << OLD_BIT) - 1
# Members before each bucket member (in node order) it is paired with.
BUCKET_NEIGHBOURS = 3


def band_blocks(params: DedupConfig, partition_keys: list[int]):
    """mapInArrow: each batch's (band_key, node) pairs, packed into one binary block per target partition.

    Every document lands in `bands` buckets; shuffling one Spark row per (document, band) costs more than the
    banding itself, so the pairs travel as a few large blocks, routed by band_key, and are unpacked in numpy.
    A node's `old` flag (its signature reused from the previous run) travels as bit OLD_BIT of the node.
    """
    bands, rows = minhash.lsh_params(params.threshold, params.num_perm)
    n_partitions = len(partition_keys)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            keys = minhash.band_keys(signature_matrix(batch.column("signature"), params.num_perm), bands, rows)
            old = batch.column("old").to_numpy(zero_copy_only=False).astype(np.int64)
            tagged = batch.column("node").to_numpy() | (old << OLD_BIT)
            pairs = np.stack([keys.reshape(-1), np.repeat(tagged, bands)], axis=1)
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
    of the partition's (band_key, node) pairs), and whether both their nodes are old."""
    blocks = [block for batch in batches for block in batch.column("pairs").to_pylist()]
    if not blocks:
        return
    pairs = np.frombuffer(b"".join(blocks), dtype=np.int64).reshape(-1, 2)
    node, old = pairs[:, 1] & NODE_MASK, (pairs[:, 1] >> OLD_BIT).astype(bool)
    src, dst, old_pair = bucket_neighbour_pairs(pairs[:, 0], node, old=old)
    columns = [pa.array(src, pa.int64()), pa.array(dst, pa.int64()), pa.array(old_pair, pa.bool_())]
    yield pa.RecordBatch.from_arrays(columns, names=CANDIDATE_SCHEMA.names)


def bucket_neighbour_pairs(
    key: np.ndarray, node: np.ndarray, neighbours: int = BUCKET_NEIGHBOURS, old: np.ndarray | None = None
):
    """Distinct (src, dst), src > dst: each member of a bucket (the nodes sharing a key) paired with the
    `neighbours` members before it in node order; with `old` (a flag per row), also whether both nodes are old.

    Pairing with the bucket's smallest node alone loses true pairs once the check drops edges: in an edit history a
    version resembles its neighbours, not necessarily the bucket minimum. A few neighbours per member keep the count
    linear in bucket size (a bucket of 10,000 near copies would give 50M pairs) and, on generated edit chains and
    trees, connect what checking all pairs in each bucket connects.
    """
    flags = np.zeros(len(node), dtype=bool) if old is None else old
    # Old rows first among a node's rows: the member kept below is old if any of its rows is.
    order = np.lexsort((~flags, node, key))
    key, node, flags = key[order], node[order], flags[order]
    # A text stored for several snapshots appears once per snapshot in its buckets: one member each.
    fresh = first_of_runs(key, node)
    key, node, flags = key[fresh], node[fresh], flags[fresh]
    same_bucket = [key[distance:] == key[:-distance] for distance in range(1, neighbours + 1)]
    src = np.concatenate([node[d + 1 :][same] for d, same in enumerate(same_bucket)])
    dst = np.concatenate([node[: -(d + 1)][same] for d, same in enumerate(same_bucket)])
    old_pair = np.concatenate([(flags[d + 1 :] & flags[: -(d + 1)])[same] for d, same in enumerate(same_bucket)])
    # A pair sharing several bands comes from several buckets.
    order = np.lexsort((dst, src))
    src, dst, old_pair = src[order], dst[order], old_pair[order]
    fresh = first_of_runs(src, dst)
    if old is None:
        return src[fresh], dst[fresh]
    return src[fresh], dst[fresh], old_pair[fresh]


def first_of_runs(*sorted_columns: np.ndarray) -> np.ndarray:
    """Mask of the rows where any column differs from the previous row (the first row always)."""
    n = len(sorted_columns[0])
    mask = np.zeros(n, dtype=bool)
    mask[:1] = True
    for column in sorted_columns:
        mask[1:] |= column[1:] != column[:-1]
    return mask


def candidate_edges(signatures: DataFrame, params: DedupConfig, partitions: int) -> DataFrame:
    """Edges (src, dst, old_pair), src > dst: every member of an LSH bucket paired with its neighbours in the bucket;
    old_pair when both nodes have the `old` flag of the signatures (reused from the previous run).

    A pair sharing several bands can come from buckets in several partitions: those copies remain (verified_edges
    drops them before checking; connected components does not mind them).
    """
    keys = placement_keys(signatures.sparkSession, partitions)
    members = signatures.filter("has_shingles").select("node", "signature", "old")
    by_bucket = members.mapInArrow(band_blocks(params, keys), BLOCK_SCHEMA).repartition(partitions, "partition_key")
    return by_bucket.mapInArrow(bucket_neighbour_batches, CANDIDATE_SCHEMA)


GRAPH_KEY_FILE = "_graph_key"  # Spark readers skip names starting with "_"


def graph_key(params: DedupConfig) -> str:
    """What the checked pairs depend on besides the signatures: the threshold (bands and check) and the pairing."""
    return f"g1-t{params.threshold}-n{BUCKET_NEIGHBOURS}-{signature_key(params)}"


def previous_checked_edges(spark: SparkSession, previous: str | None, reused: list[str], params: DedupConfig):
    """The previous run's checked pairs (a DataFrame), where this run's old nodes are exactly the previous run's:
    every snapshot it covered reused, the same check settings; else None."""
    if not previous or not params.verify_jaccard:
        return None
    key_uri = join(previous, "edges", GRAPH_KEY_FILE)
    if not store_for(key_uri).exists(key_uri) or store_for(key_uri).read_text(key_uri) != graph_key(params):
        return None
    covered = {row.snapshot for row in spark.read.parquet(f"{previous}/signature_index").select("snapshot").collect()}
    if covered != set(reused):
        return None
    return spark.read.schema(EDGE_SCHEMA).parquet(f"{previous}/edges")


def store_checked_edges(edges: DataFrame, output_uri: str, params: DedupConfig) -> None:
    """edges/, the checked pairs sorted, for the next refresh, with the settings they were checked under."""
    uri = f"{output_uri}/edges"
    write_deterministic_parquet(edges, uri, edges.sparkSession.sparkContext.defaultParallelism, ["src", "dst"])
    store_for(uri).write_text(join(uri, GRAPH_KEY_FILE), graph_key(params))


def checked_edges(
    candidates: DataFrame, signatures: DataFrame, params: DedupConfig, partitions: int, previous: DataFrame | None
) -> DataFrame:
    """The distinct candidate pairs that pass the check; with `previous`, the previous run's checked pairs over the
    same old nodes, only the pairs touching a new node are checked.

    Exact: inside a bucket the old nodes are the previous run's members (the same signatures), and new members only
    push old ones apart, so every old-old candidate was a previous candidate, checked on the same signatures; it
    passes now iff it is among the previous checked pairs.
    """
    node_signatures = signatures.select("node", "signature")
    if previous is None:
        return verified_edges(candidates.select("src", "dst"), node_signatures, params, partitions)
    new_pairs = candidates.filter(~F.col("old_pair")).select("src", "dst")
    old_pairs = previous.join(candidates.filter("old_pair").select("src", "dst"), ["src", "dst"], "left_semi")
    return verified_edges(new_pairs, node_signatures, params, partitions).unionByName(old_pairs)


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
