"""pretrain's Orbax checkpoints written to and resumed from gs:// on a GCS emulator (fake-gcs-server, its own process
on 127.0.0.1): a run on gs:// killed (SIGKILL) between checkpoints resumes from its last gs:// checkpoint, with exactly
the losses of an uninterrupted local run. Orbax reaches the bucket through TensorStore (arrays) and gcsfs (directories),
both pointed at the emulator by xgen_core.storage.point_gcs_libraries_at_emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.train.conftest import packed_dir  # noqa: F401  (the fixture: a packed micro curriculum)
from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, micro_runtime, micro_train
from xgen_core.storage import GCSStore, join
from xgen_core.train.loop import pretrain
from xgen_core.train.metrics import read_metrics

pytestmark = [pytest.mark.service, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STEPS = 8  # checkpoints every 3 steps: 3, 6 and the last
KILL_STEP = 5
RUN = r"""
import json, os, signal, sys, time
sys.path.insert(0, {repo!r})
from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, micro_runtime, micro_train
from xgen_core.storage import GCSStore
from xgen_core.train.loop import pretrain

def kill_at(record):
    if record["step"] == {kill_step}:
        # Checkpoints are saved in the background; on GCS Orbax marks a finished one with commit_success.txt.
        # Kill once step 3's is there, so the resume has a known step to start from however loaded the machine is.
        deadline = time.monotonic() + 300
        while not GCSStore.from_env().exists({out!r} + "/checkpoints/3/commit_success.txt"):
            assert time.monotonic() < deadline, "the step-3 checkpoint never finished"
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)

messages = []
pretrain({pack!r}, {out!r}, MICRO_MODEL, micro_train(), micro_runtime(max_steps={steps}), STAGE_TOKENS,
         vocab_size=320, log=messages.append, on_step=kill_at)
print(json.dumps(messages))
"""


def run_pretrain(pack: str, out: str, emulator_env: dict, kill_step: int | None) -> subprocess.CompletedProcess:
    script = RUN.format(repo=str(REPO), pack=pack, out=out, steps=STEPS, kill_step=kill_step)
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator_env["STORAGE_EMULATOR_HOST"]}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)


def losses(records: list[dict]) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"], r["lr"], r["tokens"], r.get("heldout_loss")) for r in records]


def test_pretrain_checkpoints_to_gcs_and_resumes_from_them(packed_dir, gcs_emulator_service, tmp_path,  # noqa: F811
                                                            monkeypatch):
    out = join(gcs_emulator_service["bucket"], f"pretrain-{uuid.uuid4().hex[:8]}")
    killed = run_pretrain(packed_dir, out, gcs_emulator_service, kill_step=KILL_STEP)
    assert killed.returncode == -9, killed.stderr[-3000:]

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator_service["STORAGE_EMULATOR_HOST"])
    store = GCSStore.from_env()
    saved = {Path(info.uri[len(out) + 1:]).parts[1] for info in store.list_files(join(out, "checkpoints"))}
    assert "3" in saved and "6" not in saved, saved  # the step-3 checkpoint is in the bucket, nothing later

    resumed = run_pretrain(packed_dir, out, gcs_emulator_service, kill_step=None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    messages = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert any("resuming from the checkpoint of step 3" in m for m in messages), messages

    uninterrupted = tmp_path / "local"
    pretrain(packed_dir, str(uninterrupted), MICRO_MODEL, micro_train(), micro_runtime(max_steps=STEPS),
             STAGE_TOKENS, vocab_size=320, log=lambda message: None)
    on_gcs = tmp_path / "metrics-from-gcs.jsonl"
    on_gcs.write_bytes(store.read_bytes(join(out, "metrics.jsonl")))
    assert losses(read_metrics(on_gcs)) == losses(read_metrics(uninterrupted / "metrics.jsonl"))
    finished = {Path(info.uri[len(out) + 1:]).parts[1] for info in store.list_files(join(out, "checkpoints"))}
    assert str(STEPS) in finished
