"""Recall on edit histories: versions that resemble their neighbours, not the first version, stay in one cluster."""

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.data.test_dedup import PARAMS, write_jsonl
from tests.data.test_dedup_components import union_find_roots
from xgen_core.data import minhash
from xgen_core.data.dedup import run_dedup
from xgen_core.data.neardup_set import generate_histories, true_pairs_f1

pytestmark = pytest.mark.spark

SHAPES = ("chain", "tree")
DOCS_PER_SHAPE = 2000
SEED = 3


def histories(shape: str) -> list[dict]:
    return [
        {"id": f"{shape}-{d.id}", "text": d.text, "url": d.url, "snapshot": d.snapshot, "truth": f"{shape}-{d.true_cluster}"}
        for d in generate_histories(DOCS_PER_SHAPE, seed=SEED, shape=shape)
    ]


@pytest.fixture(scope="module")
def history_run(spark, tmp_path_factory):
    """Both shapes deduplicated in one run: rows by shape, and the predicted cluster of every id."""
    tmp = tmp_path_factory.mktemp("histories")
    rows = {shape: histories(shape) for shape in SHAPES}
    every_row = [{k: v for k, v in row.items() if k != "truth"} for shape in SHAPES for row in rows[shape]]
    run_dedup(spark, write_jsonl(tmp / "histories.jsonl", every_row), str(tmp / "out"), PARAMS.model_copy(update={"rows_per_chunk": 1000}))
    out = pq.read_table(tmp / "out" / "data", columns=["id", "cluster_id"]).to_pylist()
    return rows, {row["id"]: row["cluster_id"] for row in out}


@pytest.fixture(scope="module")
def bucket_pairs(history_run):
    """shape -> (distinct texts, their pairs that share a bucket and pass the check)."""
    rows, _ = history_run
    texts = {shape: sorted({row["text"] for row in rows[shape]}) for shape in SHAPES}
    return {shape: (texts[shape], passing_bucket_pairs(texts[shape])) for shape in SHAPES}


def passing_bucket_pairs(texts: list[str]) -> set[tuple[int, int]]:
    """Pairs of distinct texts (by index) that share an LSH bucket and pass the estimated-Jaccard check."""
    signatures, has_shingles = minhash.signatures(texts, PARAMS.ngram, PARAMS.num_perm, PARAMS.seed, scheme=PARAMS.hash_scheme)
    bands, rows = minhash.lsh_params(PARAMS.threshold, PARAMS.num_perm)
    keys = minhash.band_keys(signatures, bands, rows)
    buckets = defaultdict(set)
    for text_index in np.flatnonzero(has_shingles):
        for key in keys[text_index]:
            buckets[int(key)].add(int(text_index))
    pairs = {(a, b) for members in buckets.values() for a in members for b in members if a < b}
    return {(a, b) for a, b in pairs if (signatures[a] == signatures[b]).mean() >= PARAMS.threshold}


def all_pairs_clusters(rows: list[dict], texts: list[str], pairs: set[tuple[int, int]]) -> dict[str, int]:
    """id -> cluster when every pair sharing a bucket is checked (and exact copies joined): the recall reference."""
    roots = union_find_roots(sorted(pairs))
    index = {text: i for i, text in enumerate(texts)}
    return {row["id"]: roots.get(index[row["text"]], index[row["text"]]) for row in rows}


@pytest.mark.parametrize("shape", SHAPES)
def test_edit_histories_keep_the_recall_of_checking_every_bucket_pair(history_run, bucket_pairs, shape):
    rows, predicted = history_run
    rows = rows[shape]
    truth = {row["id"]: row["truth"] for row in rows}
    ours = true_pairs_f1({row["id"]: predicted[row["id"]] for row in rows}, truth)
    reference = true_pairs_f1(all_pairs_clusters(rows, *bucket_pairs[shape]), truth)
    assert ours["f1"] >= 0.98
    assert ours["recall"] >= reference["recall"] - 0.01
    assert ours["precision"] >= reference["precision"] - 1e-9


@pytest.mark.parametrize("shape", SHAPES)
def test_no_bucket_pair_that_passes_the_check_is_left_in_two_clusters(history_run, bucket_pairs, shape):
    rows, predicted = history_run
    cluster_of_text = {row["text"]: predicted[row["id"]] for row in rows[shape]}
    texts, pairs = bucket_pairs[shape]
    split = [(a, b) for a, b in pairs if cluster_of_text[texts[a]] != cluster_of_text[texts[b]]]
    assert split == []


def test_bucket_members_are_paired_with_a_few_neighbours_not_all_pairs():
    from xgen_core.data.dedup.candidates import BUCKET_NEIGHBOURS, bucket_neighbour_pairs

    # Bucket 5 holds 3, 8, 10, 20 (node 3 twice: one text stored for two snapshots); bucket 7 holds 1 and 2.
    key = np.array([5, 5, 5, 5, 7, 7, 5, 9], dtype=np.int64)
    node = np.array([10, 3, 8, 3, 1, 2, 20, 4], dtype=np.int64)
    src, dst = bucket_neighbour_pairs(key, node, neighbours=2)
    assert sorted(zip(src.tolist(), dst.tolist())) == [(2, 1), (8, 3), (10, 3), (10, 8), (20, 8), (20, 10)]
    members = np.arange(10_000, dtype=np.int64)
    src, dst = bucket_neighbour_pairs(np.zeros_like(members), members)
    assert len(src) == sum(len(members) - d for d in range(1, BUCKET_NEIGHBOURS + 1))
    assert np.all(src > dst)
