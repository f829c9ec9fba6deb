"""Step 3 as numpy records in blocks: packing round trip, and the check (buckets -> edges routed by src -> by dst)
against a direct numpy check of the same signatures, in plain Python (each exchange simulated) and in Spark."""

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from tests.data.test_dedup import PARAMS
from xgen_core.data import minhash
from xgen_core.data.dedup import candidates
from xgen_core.data.dedup.candidates import (
    attach_source_sketches, bucket_edge_blocks, bucket_neighbour_pairs, check_edges, edge_rows, graph_edges,
    signature_blocks, signature_rows_as_blocks,
)  # fmt: skip
from xgen_core.data.sparkio import fixed_width_binary, placement_keys
from xgen_core.data import sparkio
from xgen_core.data.sparkio import pack_by_partition, unpack_records

RECORD = np.dtype([("node", "<i8"), ("value", "<u2", (3,))])


@pytest.mark.parametrize("block_bytes, batch_blocks", [(1, 3), (50, 2), (1 << 20, 64)])
def test_records_packed_by_partition_come_back_whole_in_their_partitions(monkeypatch, block_bytes, batch_blocks):
    monkeypatch.setattr(sparkio, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(sparkio, "BATCH_BLOCKS", batch_blocks)
    rng = np.random.default_rng(1)
    records = np.zeros(200, dtype=RECORD)
    records["node"] = rng.integers(0, 2**60, len(records))
    records["value"] = rng.integers(0, 2**16, (len(records), 3))
    target = rng.integers(0, 4, len(records))
    target[target == 2] = 1  # partition 2 gets nothing
    partition_keys = [100, 101, 102, 103]
    batches = list(pack_by_partition(records, target, partition_keys))
    assert all(len(batch_keys) <= batch_blocks for batch_keys, _ in batches)
    keys = [key for batch_keys, _ in batches for key in batch_keys.to_pylist()]
    blocks = [block for _, batch_blocks_ in batches for block in batch_blocks_.to_pylist()]
    assert 102 not in keys
    assert all(len(block) <= max(block_bytes, RECORD.itemsize) for block in blocks)
    for partition, key in enumerate(partition_keys):
        back = unpack_records([block for k, block in zip(keys, blocks) if k == key], RECORD)
        # Records keep their order within a partition.
        assert back.tobytes() == records[target == partition].tobytes()
    assert len(unpack_records([], RECORD)) == 0


def clustered_signatures(seed: int, clusters: int = 60, num_perm: int = 128):
    """(node, signature) rows: clusters of signatures that agree on a random share of values (some above the
    threshold, some below), some texts signed twice (two snapshots), in shuffled order."""
    rng = np.random.default_rng(seed)
    nodes, sigs = [], []
    for _ in range(clusters):
        base = rng.integers(0, 2**32, num_perm, dtype=np.uint32)
        for _ in range(int(rng.integers(1, 7))):
            sig = base.copy()
            changed = rng.random(num_perm) < rng.uniform(0.0, 0.8)
            sig[changed] = rng.integers(0, 2**32, int(changed.sum()), dtype=np.uint32)
            nodes.append(int(rng.integers(0, 2**60)))
            sigs.append(sig)
    twice = rng.choice(len(nodes), len(nodes) // 5, replace=False)
    nodes, sigs = np.array(nodes + [nodes[i] for i in twice]), np.stack(sigs + [sigs[i] for i in twice])
    order = rng.permutation(len(nodes))
    return nodes[order], sigs[order]


def direct_check(nodes: np.ndarray, sigs: np.ndarray, params) -> set[tuple[int, int]]:
    """The bucket pairs of all signatures at once, checked on the full signatures."""
    bands, rows = minhash.lsh_params(params.threshold, params.num_perm)
    keys = minhash.band_keys(sigs, bands, rows)
    src, dst = bucket_neighbour_pairs(keys.reshape(-1), np.repeat(nodes, bands))
    row_of = {int(node): row for row, node in enumerate(nodes)}
    left, right = sigs[[row_of[s] for s in src.tolist()]], sigs[[row_of[d] for d in dst.tolist()]]
    similar = minhash.estimated_jaccard(left, right) >= params.threshold
    return set(zip(src[similar].tolist(), dst[similar].tolist())), set(zip(src.tolist(), dst.tolist()))


def signature_batches(nodes: np.ndarray, sigs: np.ndarray, batch_rows: int) -> list[pa.RecordBatch]:
    return [
        pa.RecordBatch.from_arrays(
            [
                pa.array(nodes[start : start + batch_rows]),
                fixed_width_binary(sigs[start : start + batch_rows]),
                pa.array(np.ones(len(nodes[start : start + batch_rows]), dtype=bool)),
            ],
            names=["node", "signature", "has_shingles"],
        )
        for start in range(0, len(nodes), batch_rows)
    ]


def exchange(batches, partition_keys: list[int]) -> list[list[pa.RecordBatch]]:
    """Blocks moved to the partition their key is placed on, in shuffled order (as Spark's shuffle may)."""
    rows = [row for batch in batches for row in batch.to_pylist()]
    np.random.default_rng(len(rows)).shuffle(rows)
    by_partition = defaultdict(list)
    for row in rows:
        by_partition[partition_keys.index(row["partition_key"])].append(row)
    schema = pa.schema([("partition_key", pa.int64()), ("kind", pa.int8()), ("payload", pa.binary())])
    return [[pa.RecordBatch.from_pylist(by_partition[p], schema=schema)] if by_partition[p] else [] for p in range(len(partition_keys))]


def of_kind(batches, kind: int):
    return [batch.filter(pa.compute.equal(batch.column("kind"), kind)) for batch in batches]


def run_partitions(compute, partitions):
    return [batch for partition in partitions for batch in compute(iter(partition))]


@pytest.mark.parametrize("n_partitions", [1, 2, 3, 7])
def test_block_check_equals_a_direct_check_of_the_signatures(n_partitions):
    nodes, sigs = clustered_signatures(seed=n_partitions)
    expected, candidate_pairs = direct_check(nodes, sigs, PARAMS)
    assert 0 < len(expected) < len(candidate_pairs)  # some pairs fail the check: it is tested both ways
    partition_keys = [1000 + p for p in range(n_partitions)]

    routed = run_partitions(signature_blocks(PARAMS, partition_keys), [signature_batches(nodes, sigs, 37)])
    edges = run_partitions(bucket_edge_blocks(partition_keys), exchange(of_kind(routed, candidates.BANDS), partition_keys))
    signatures = of_kind(routed, candidates.SIGNATURES)
    with_sources = run_partitions(attach_source_sketches(PARAMS, partition_keys), exchange(edges + signatures, partition_keys))
    checked = run_partitions(check_edges(PARAMS), exchange(with_sources + signatures, partition_keys))
    pairs = [(src, dst) for batch in checked for src, dst in zip(batch.column("src").to_pylist(), batch.column("dst").to_pylist())]
    assert len(pairs) == len(set(pairs))  # pairs found in buckets of several partitions are checked once
    assert set(pairs) == expected

    unchecked = run_partitions(edge_rows, [[batch] for batch in edges])
    found = {(src, dst) for batch in unchecked for src, dst in zip(batch.column("src").to_pylist(), batch.column("dst").to_pylist())}
    assert found == candidate_pairs


def test_edges_without_a_signature_are_dropped_and_empty_partitions_give_nothing():
    partition_keys = [5, 6]
    nodes, sigs = np.array([10, 12]), np.zeros((2, PARAMS.num_perm), dtype=np.uint32)
    routed = run_partitions(signature_blocks(PARAMS, partition_keys), [signature_batches(nodes, sigs, 8)])
    # 12 -> 10 passes (equal signatures); 14 -> 10 and 12 -> 11: node 14 and node 11 were never signed.
    edges = np.array([(12, 10), (14, 10), (12, 11)], dtype=candidates.EDGE_RECORD)
    target = candidates.node_partition(edges["src"], 2)
    edge_blocks = list(candidates.packed(candidates.EDGES, edges, target, partition_keys))
    signatures = of_kind(routed, candidates.SIGNATURES)
    with_sources = run_partitions(attach_source_sketches(PARAMS, partition_keys), exchange(edge_blocks + signatures, partition_keys))
    checked = run_partitions(check_edges(PARAMS), exchange(with_sources + signatures, partition_keys))
    assert [(s, d) for batch in checked for s, d in zip(batch.column("src").to_pylist(), batch.column("dst").to_pylist())] == [(12, 10)]
    for compute in (bucket_edge_blocks(partition_keys), attach_source_sketches(PARAMS, partition_keys), check_edges(PARAMS), edge_rows):
        assert list(compute(iter([]))) == []


@pytest.mark.spark
@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("verify", [True, False])
def test_graph_edges_in_spark_equal_the_direct_check(spark, partitions, verify):
    nodes, sigs = clustered_signatures(seed=11)
    expected, candidate_pairs = direct_check(nodes, sigs, PARAMS)
    # Texts without shingles (here given signatures that would share every bucket) are neither banded nor checked.
    blank = np.arange(3, dtype=np.int64) + 2**61
    rows = [(int(n), s.tobytes(), True) for n, s in zip(nodes, sigs)]
    rows += [(int(n), np.zeros(PARAMS.num_perm, np.uint32).tobytes(), False) for n in blank]
    signatures = spark.createDataFrame(rows, "node long, signature binary, has_shingles boolean").repartition(4)
    params = PARAMS.model_copy(update={"verify_jaccard": verify})
    keys = placement_keys(spark, partitions)
    edges = graph_edges(signature_rows_as_blocks(signatures, params, keys), params, keys)
    found = [(row.src, row.dst) for row in edges.collect()]
    if verify:
        assert len(found) == len(set(found)) and set(found) == expected
    else:
        assert set(found) == candidate_pairs

