"""A run killed (SIGKILL) at any step and started again resumes by itself with exactly the same losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xgen_core.train.loop import pretrain
from xgen_core.train.metrics import read_metrics

from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, micro_runtime, micro_train

STEPS = 10
KILLED_RUN = r"""
import os, signal, sys, time
sys.path.insert(0, {repo_root!r})
from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, micro_runtime, micro_train
from xgen_core.train.loop import pretrain

def kill_at(record):
    if record["step"] == {kill_step}:
        # Orbax finalises step 3's checkpoint in a background thread; on a loaded host it may not have by step 5.
        # Wait for it so that the test checks where a kill between checkpoints resumes, not a race with the save.
        deadline = time.monotonic() + 120
        while {kill_step} >= 3 and not os.path.isdir(os.path.join({out!r}, "checkpoints", "3")):
            if time.monotonic() > deadline:
                sys.exit("step 3's checkpoint was not finalised within 120 s")
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)

pretrain({packed_dir!r}, {out!r}, MICRO_MODEL, micro_train(), micro_runtime(max_steps={steps}), STAGE_TOKENS,
         vocab_size=320, log=lambda m: None, on_step=kill_at)
"""


def train(packed_dir, out, log=lambda message: None):
    return pretrain(packed_dir, str(out), MICRO_MODEL, micro_train(), micro_runtime(max_steps=STEPS), STAGE_TOKENS,
                    vocab_size=320, log=log)


@pytest.fixture(scope="module")
def uninterrupted(packed_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(packed_dir, out)
    return read_metrics(out / "metrics.jsonl")


def losses(records):
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["tokens"], r.get("heldout_loss")) for r in records]


@pytest.mark.parametrize("kill_step", [1, 5])  # before the first checkpoint; between checkpoints 3 and 6
def test_killed_run_resumes_with_identical_losses(packed_dir, tmp_path, uninterrupted, kill_step):
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = KILLED_RUN.format(repo_root=repo_root, kill_step=kill_step, packed_dir=packed_dir,
                               out=str(tmp_path), steps=STEPS)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, kill_step + 1))

    messages = []
    train(packed_dir, tmp_path, log=messages.append)
    resumed_from = 3 if kill_step >= 3 else None
    assert any(f"resuming from the checkpoint of step {resumed_from}" in m for m in messages) == bool(resumed_from)
    assert losses(read_metrics(tmp_path / "metrics.jsonl")) == losses(uninterrupted)


def test_finished_run_started_again_trains_no_further(packed_dir, tmp_path):
    messages = []
    train(packed_dir, tmp_path, log=messages.append)
    first = read_metrics(tmp_path / "metrics.jsonl")
    summary = train(packed_dir, tmp_path)
    assert read_metrics(tmp_path / "metrics.jsonl") == first
    assert summary["last_step"] == STEPS
    # The epochs of each stage's data the run used: rows drawn (steps x batch) over rows packed.
    packed = json.loads((Path(packed_dir) / "stages.json").read_text())
    assert sum(stage["steps_used"] for stage in summary["stages"]) == STEPS
    for stage, entry in zip(summary["stages"], packed["stages"]):
        assert stage["epochs_used"] == stage["steps_used"] * 4 / entry["train"]["rows"]
    assert sum(m.startswith(f"{name}: ") and "packed rows" in m for m in messages for name in STAGE_TOKENS) == 4
