"""How many epochs of each curriculum stage's data a run used: logged, in summary.json / the manifest, reported."""

import json

import pytest

from xgen_core.train.loop import describe_epochs, stage_epochs
from xgen_core.train.metrics import pretrain_report_section
from xgen_core.train.schedule import plan_stages

BATCH = 4


def packed():
    rows = {"pl": 10, "diverse": 60, "sharpen": 40, "anneal": 5}
    return {"stages": [{"name": name, "train": {"rows": count, "tokens": count * 30}} for name, count in rows.items()]}


def plans():  # 4 x 32 tokens a step -> 10, 30, 40, 20 steps
    return plan_stages([("pl", 1280, 32), ("diverse", 3840, 32), ("sharpen", 5120, 32), ("anneal", 2560, 32)], BATCH)


def test_epochs_are_rows_drawn_over_rows_packed_up_to_the_last_step():
    stages = stage_epochs(plans(), packed(), BATCH, last_step=55)
    assert [s["epochs_planned"] for s in stages] == [4.0, 2.0, 4.0, 16.0]  # e.g. 10 steps x 4 rows / 10 rows
    assert [s["steps_used"] for s in stages] == [10, 30, 15, 0]
    assert [s["epochs_used"] for s in stages] == [4.0, 2.0, 1.5, 0.0]
    assert "repeats its data 16.00 times" in describe_epochs(stages[3], BATCH)
    cut = stage_epochs(plans(), {"stages": [{**s, "train": {"rows": 1000, "tokens": 1}} for s in packed()["stages"]]},
                       BATCH, last_step=100)
    assert "reads 4% of its data" in describe_epochs(cut[0], BATCH)


def test_the_report_shows_each_stage_epochs(tmp_path):
    summary = {"last_step": 55, "total_steps": 100, "heldout_loss": 2.0, "unigram_baseline_loss": 3.0,
               "peak_flops_per_device": 1e12, "peak_flops_source": "config",
               "stages": stage_epochs(plans(), packed(), BATCH, last_step=55)}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    record = {"step": 55, "loss": 2.1, "tokens": 7040, "mfu": 0.1, "loss_spike": False}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    section = pretrain_report_section({}, str(tmp_path), str(tmp_path))
    assert "epochs used" in section
    assert "| sharpen | 15 / 40 | 5,120 | 1,200 | 40 | 1.50 | 4.00 |" in section
    assert "| anneal | 0 / 20 | 2,560 | 150 | 5 | 0.00 | 16.00 |" in section


@pytest.mark.parametrize("last_step", [0, 100, 1000])
def test_steps_used_never_exceed_the_plan(last_step):
    for stage in stage_epochs(plans(), packed(), BATCH, last_step):
        assert 0 <= stage["steps_used"] <= stage["steps"]
