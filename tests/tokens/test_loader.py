import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_core.tokens.corpus import iter_stage_documents
from xgen_core.tokens.loader import CurriculumLoader, ShardSet, StageData
from xgen_core.tokens.packing import pack_documents, write_shards


def write_stage(directory, first_token, documents=40) -> ShardSet:
    docs = [[first_token + i] * (3 + i % 5) for i in range(documents)]
    counts = write_shards(pack_documents(docs, seq_len=7, bos_id=1, eos_id=2, pad_id=0), str(directory),
                          rows_per_shard=8, pad_id=0)
    return ShardSet(str(directory), tuple(counts["shard_rows"]), bos_id=1, pad_id=0)


def make_loader(tmp_path, seed=0, process_index=0, process_count=1):
    shard_sets = [write_stage(tmp_path / "a", 100), write_stage(tmp_path / "b", 500)]
    stages = [StageData("a", shard_sets[0], 0), StageData("b", shard_sets[1], 3)]
    return CurriculumLoader(stages, batch_rows=4, seed=seed, process_index=process_index,
                            process_count=process_count)


def test_stage_switches_at_its_start_step(tmp_path):
    loader = make_loader(tmp_path)
    names = [loader.batch_for_step(step)[0].name for step in range(6)]
    assert names == ["a", "a", "a", "b", "b", "b"]
    _, batch = loader.batch_for_step(6)
    real = batch["tokens"][batch["segment_ids"] > 0]
    assert ((real < 3) | (real >= 500)).all()  # only stage b's documents (and BOS/EOS)


def test_restored_state_replays_the_same_batches(tmp_path):
    loader = make_loader(tmp_path)
    for step in range(4):
        loader.batch_for_step(step)
    state = loader.get_state()
    expected = [loader.batch_for_step(step)[1]["tokens"] for step in range(4, 9)]
    fresh = make_loader(tmp_path)
    fresh.set_state(state)
    replayed = [fresh.batch_for_step(step)[1]["tokens"] for step in range(4, 9)]
    for a, b in zip(expected, replayed):
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_order_other_seed_other_order(tmp_path):
    batches = lambda seed: np.concatenate([make_loader(tmp_path, seed).batch_for_step(0)[1]["tokens"]])
    np.testing.assert_array_equal(batches(0), batches(0))
    assert not np.array_equal(batches(0), batches(1))


def test_processes_read_disjoint_rows(tmp_path):
    rows = [
        {tuple(r) for r in make_loader(tmp_path, process_index=i, process_count=2).batch_for_step(0)[1]["tokens"]}
        for i in range(2)
    ]
    assert not rows[0] & rows[1]


def test_stage_documents_from_parquet_and_jsonl_in_file_order(tmp_path):
    parquet_dir = tmp_path / "parquet"
    parquet_dir.mkdir()
    pq.write_table(pa.table({"text": ["b1", "b2"], "x": [1, 2]}), parquet_dir / "part-1.parquet")
    pq.write_table(pa.table({"text": ["a1", ""]}), parquet_dir / "part-0.parquet")
    (parquet_dir / "_SUCCESS").write_text("")
    assert list(iter_stage_documents(str(parquet_dir))) == ["a1", "b1", "b2"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"id": 1, "text": "x"}\n\n{"id": 2, "text": "y"}\n')
    assert list(iter_stage_documents(str(jsonl))) == ["x", "y"]


def test_mixture_repeats_are_spread_over_the_stage(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    stage = tmp_path / "stages" / "s1"
    stage.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["A", "B", "C"], "repeats": [3, 1, 2]}), stage / "part-0.parquet")
    assert list(iter_stage_documents(str(stage))) == ["A", "B", "C", "A", "C", "A"]
    assert list(iter_stage_documents(str(stage), expand_repeats=False)) == ["A", "B", "C"]
