"""SFT: held-out assistant loss goes down, user files are read with bad rows quarantined, a killed run resumes
to the same losses."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xgen_core.train.metrics import read_metrics

from tests.posttrain.fixtures import kill_then_resume, run_stage_function


@pytest.fixture(scope="module")
def uninterrupted(init_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    result = run_stage_function("sft", init_artifact, str(out))
    return out, result


def test_sft_lowers_heldout_assistant_loss_per_category(uninterrupted):
    out, result = uninterrupted
    before, after = result["metrics"]["heldout_before"], result["metrics"]["heldout_after"]
    assert after["assistant_loss"] < before["assistant_loss"]
    counts = json.loads((out / "data.json").read_text())
    assert all(counts[f"train_{category}"] > 0 for category in ("general", "safety", "reasoning"))
    heldout_categories = {k.removeprefix("heldout_") for k in counts if k.startswith("heldout_") and counts[k]}
    assert {k.removeprefix("assistant_loss_") for k in after if k != "assistant_loss"} == heldout_categories - {
        "examples"}
    assert len(heldout_categories - {"examples"}) >= 2
    records = read_metrics(out / "metrics.jsonl")
    assert records[0]["step"] == 0 and records[-1]["step"] == result["counts"]["total_steps"]
    assert all(r["assistant_tokens"] > 0 for r in records[1:])


def test_killed_sft_resumes_with_identical_losses(init_artifact, uninterrupted, tmp_path):
    out, result = uninterrupted
    messages = kill_then_resume("sft", init_artifact, tmp_path, kill_step=3)
    assert any("resuming from the checkpoint of step 2" in m for m in messages)
    fields = ("step", "loss", "grad_norm", "lr", "heldout_assistant_loss")
    expected = [tuple(r.get(f) for f in fields) for r in read_metrics(out / "metrics.jsonl")]
    assert [tuple(r.get(f) for f in fields) for r in read_metrics(tmp_path / "metrics.jsonl")] == expected


def test_sft_reads_jsonl_and_parquet_and_quarantines_bad_rows(init_artifact, tmp_path):
    good = {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                         {"role": "assistant", "content": "1 + 1 = 2. The answer is 2."}], "category": "reasoning"}
    bad_rows = [
        {"messages": [{"role": "user", "content": "hi"}]},  # no assistant turn
        {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]},
        {"prompt": "not a chat"},
    ]
    data = tmp_path / "data"
    data.mkdir()
    lines = [json.dumps(good)] * 12 + [json.dumps(row) for row in bad_rows] + ["{not json"]
    (data / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist([good] * 6), data / "part-1.parquet")
    result = run_stage_function("sft", init_artifact, str(tmp_path / "out"), data=[str(data)])
    counts = result["counts"]
    assert counts["train_examples"] + counts["heldout_examples"] == 18
    assert {k: v for k, v in counts.items() if k.startswith("quarantined_")} == {
        "quarantined_no_assistant_turn": 1, "quarantined_bad_role": 1, "quarantined_empty_content": 1,
        "quarantined_too_long": 1, "quarantined_no_messages": 1, "quarantined_not_json": 1}
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 6
