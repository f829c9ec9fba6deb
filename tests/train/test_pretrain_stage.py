"""The acceptance interface: `xgen train pretrain --profile tiny --out URI --steps N [key=value ...]`."""

import json

import pytest

from tests.conftest import SMALL_CORPUS
from xgen_core.cli import main
from xgen_core.config import load_config
from xgen_core.stages import run_pipeline
from xgen_core.train.metrics import read_metrics

# A micro model on the small sample corpus: every stage of the chain in seconds.
OVERRIDES = [
    *SMALL_CORPUS, "tokenizer.vocab_size=512", "pack.seq_len=64", "pack.rows_per_shard=64",
    "pack.heldout_fraction=0.1", "model.preset=micro", "model.compute_dtype=float32", "train.batch_size=16",
    "train.grad_accum_steps=4", "train_run.checkpoint_every=2", "train_run.eval_every=3", "train_run.eval_batches=1",
    "mixture.stages=[{name: pl_heavy, tokens: 4096, pl_share: 0.6, min_quality_percentile: 0.0},"
    " {name: diverse, tokens: 8192, pl_share: 0.35, min_quality_percentile: 0.0},"
    " {name: sharpening, tokens: 8192, pl_share: 0.3, min_quality_percentile: 0.4},"
    " {name: anneal, tokens: 4096, pl_share: 0.25, min_quality_percentile: 0.75}]",
]


@pytest.mark.spark
def test_pretrain_command_writes_metrics_and_resumes_from_the_out_uri(tmp_path, capsys):
    root = str(tmp_path / "artifacts")
    run_pipeline(load_config("tiny", [f"root={root}", *OVERRIDES]), "test-run", until="pack")
    out = tmp_path / "pretrain-out"
    command = ["train", "pretrain", "--profile", "tiny", "--root", root, "--out", str(out)]

    main([*command, "--steps", "3", *OVERRIDES])
    first = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in first] == [1, 2, 3]
    assert {"step", "loss", "lr", "tokens", "grad_norm", "mfu", "tokens_per_s"} <= set(first[0])
    assert (out / "_SUCCESS").exists() and (out / "lr_schedule.png").exists()
    assert list((out / "tensorboard").iterdir())

    main([*command, "--steps", "5", *OVERRIDES])
    resumed = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    assert resumed[:3] == first
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"steps": 5, "curriculum_steps": 24}  # 4096-8192 tokens / (16 x 64) per step
    assert "pretrain: built" in capsys.readouterr().out
    assert not manifest["complete"]

    main([*command, *OVERRIDES])  # no --steps: to the end of the curriculum, then the artifact is finished
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 25))
    assert json.loads((out / "manifest.json").read_text())["complete"]
    main([*command, "--steps", "20", *OVERRIDES])
    assert "pretrain: reused" in capsys.readouterr().out
