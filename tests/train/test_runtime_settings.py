"""Runtime settings (mesh shape, checkpoint and eval cadence, ...) neither version nor restart pretraining."""

import json
import os
import subprocess
import sys

import pytest

from xgen_core.config import load_config
from xgen_core.stages import resolve
from xgen_core.train.metrics import read_metrics

RUNTIME_CHANGES = [
    "train_run.mesh.data=2", "train_run.mesh.fsdp=4", "train_run.checkpoint_every=7", "train_run.keep_checkpoints=9",
    "train_run.eval_every=11", "train_run.eval_batches=3", "train_run.peak_flops_per_device=1.0e+15",
    "train_run.spike_factor=2.5", "train_run.spike_warmup_steps=3", "train_run.max_steps=5",
]


def pretrain_version(profile: str, *overrides: str) -> str:
    return resolve(load_config(profile, ["root=/nonexistent", "ingest.inputs=[]", *overrides]), "pretrain").version


@pytest.mark.parametrize("profile", ["tiny", "xgen-small-4b"])
def test_runtime_settings_leave_the_pretrain_version_alone(profile):
    assert pretrain_version(profile, *RUNTIME_CHANGES) == pretrain_version(profile)
    for decisive in ("train.peak_lr=0.0001", "train.batch_size=512", "train.seed=7", "model.preset=xgen-small-9b",
                     "train.final_lr_ratio=0.1"):
        assert pretrain_version(profile, decisive) != pretrain_version(profile), decisive


def test_the_manifest_records_the_runtime_settings_beside_the_versioned_config():
    from xgen_core.stages import STAGE_BY_NAME

    stage = STAGE_BY_NAME["pretrain"]
    assert "train_run" in stage.runtime_sections and "train_run" not in stage.config_sections
    cfg = load_config("tiny")
    assert "mesh" not in cfg.section_dump("train") and "checkpoint_every" not in cfg.section_dump("train")
    assert {"mesh", "checkpoint_every", "eval_every", "peak_flops_per_device"} <= set(cfg.section_dump("train_run"))


RUNS = r"""
import json, sys
sys.path.insert(0, {repo_root!r})
from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, micro_runtime, micro_train
from xgen_core.train.loop import pretrain

logs = []
for out, mesh, every, steps in {runs!r}:
    messages = []
    runtime = micro_runtime(mesh=mesh, checkpoint_every=every, max_steps=steps, eval_every=100)
    pretrain({packed_dir!r}, out, MICRO_MODEL, micro_train(), runtime, STAGE_TOKENS, vocab_size=320,
             log=messages.append)
    logs.append(messages)
print(json.dumps(logs))
"""


def run_on_four_devices(packed_dir, runs) -> list[list[str]]:
    """Pretraining runs one after the other in one process with 4 CPU devices: (out, mesh, cadence, steps)."""
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = RUNS.format(repo_root=repo_root, runs=runs, packed_dir=packed_dir)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_resumed_on_another_mesh_with_another_cadence_continues_the_same_training(packed_dir, tmp_path):
    resumed, whole = str(tmp_path / "resumed"), str(tmp_path / "whole")
    logs = run_on_four_devices(packed_dir, [
        (resumed, (1, 2, 2), 2, 4),  # data 1 x fsdp 2 x tensor 2, a checkpoint every 2 steps, stop at step 4
        (resumed, (2, 1, 2), 3, 6),  # the same artifact on data 2 x fsdp 1 x tensor 2, every 3 steps
        (whole, (1, 2, 2), 2, 6),
    ])
    assert any("resuming from the checkpoint of step 4" in m for m in logs[1])
    got, expected = read_metrics(f"{resumed}/metrics.jsonl"), read_metrics(f"{whole}/metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in got] == [r["lr"] for r in expected]
    # Another mesh sums in another order: the same training up to float rounding.
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], rel=1e-4)
