"""A micro model artifact to post-train in tests (a plain module so subprocesses can import it too)."""

from __future__ import annotations

import json
from pathlib import Path

from xgen_core.config import (
    GeneratedDataConfig, DpoConfig, GrpoConfig, MeshConfig, ModelConfig, PosttrainRunConfig, SftConfig, TrainConfig,
)

MICRO_MODEL = ModelConfig(preset="micro", attention_impl="auto", compute_dtype="float32", param_dtype="float32",
                          remat=False, scan_layers=True)
MICRO_TRAIN = TrainConfig(batch_size=4, grad_accum_steps=1, peak_lr=3e-3, slow_decay_end_ratio=0.3, final_lr_ratio=0.0,
                          weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0, seed=0)
MESH = MeshConfig(data=1, fsdp=-1, tensor=1, distributed=False)
GENERATE = GeneratedDataConfig(general=20, safety=12, reasoning=40, max_operand=9, code_share=0.2)


def run_config(**changes) -> PosttrainRunConfig:
    return PosttrainRunConfig(**{**dict(max_steps=None, checkpoint_every=2, keep_checkpoints=2, eval_every=3), **changes})


def sft_config(**changes) -> SftConfig:
    settings = dict(data=[], generate=GENERATE, heldout_fraction=0.2, seq_len=256, batch_size=4, epochs=1.0,
                    peak_lr=3e-3, warmup_fraction=0.1, final_lr_ratio=0.1, weight_decay=0.0, seed=3)
    return SftConfig(**{**settings, **changes})


def dpo_config(**changes) -> DpoConfig:
    settings = dict(data=[], generate=GENERATE, heldout_fraction=0.2, max_len=256, batch_size=4, epochs=1.0, beta=0.1,
                    peak_lr=3e-3, warmup_fraction=0.1, final_lr_ratio=0.1, weight_decay=0.0, seed=3)
    return DpoConfig(**{**settings, **changes})


def grpo_config(**changes) -> GrpoConfig:
    settings = dict(data=[], math_prompts=24, code_prompts=0, max_operand=9, math_kinds=[], heldout_prompts=4,
                    steps=4, prompts_per_step=2, group_size=4, updates_per_batch=2, max_new_tokens=8, temperature=1.0,
                    top_p=1.0, clip_eps=0.2, kl_coef=0.0, advantage_eps=1e-6, peak_lr=3e-3, warmup_fraction=0.0,
                    weight_decay=0.0, code_timeout_s=10.0, seed=3)
    return GrpoConfig(**{**settings, **changes})


def training_texts() -> list[str]:
    from xgen_core.posttrain.data import generated_sft_rows

    rows = generated_sft_rows(0, {"general": 30, "safety": 30, "reasoning": 60}, 9, 0.2)
    return [m["content"] for row in rows for m in row["messages"]] + ["system\n", "user\n", "assistant\n"]


def make_init_artifact(root: Path) -> str:
    """A committed-looking `pretrain` artifact: manifest, tokenizer input and an Orbax checkpoint of a fresh
    micro model (step 1)."""
    import jax
    import optax

    from xgen_core.tokens.tokenizer import save_tokenizer, tokenizer_config, train_tokenizer
    from xgen_core.train.checkpoint import Checkpointer
    from xgen_core.train.loop import build_model
    from xgen_core.train.optimizer import make_optimizer
    from xgen_core.train.step import _init_fn

    tokenizer = train_tokenizer(training_texts(), vocab_size=400, min_frequency=2)
    config = tokenizer_config(tokenizer, 400)
    save_tokenizer(tokenizer, config, root / "tokenizer")
    model = build_model(MICRO_MODEL, config["vocab_size"])
    tx = make_optimizer(optax.constant_schedule(0.0), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    state = jax.jit(_init_fn(model, tx))(jax.numpy.asarray(0, jax.numpy.uint32))
    out = root / "pretrain"
    checkpointer = Checkpointer(str(out / "checkpoints"), keep=1, asynchronous=False)
    checkpointer.save(1, state, {}, {})
    checkpointer.close()
    manifest = {"stage": "pretrain", "uri": str(out), "inputs": {"tokenizer": str(root / "tokenizer")},
                "config": {"model": MICRO_MODEL.model_dump(mode="json"), "train": MICRO_TRAIN.model_dump(mode="json")}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").write_text("")
    return str(out)


STAGE_CONFIGS = {"sft": sft_config, "dpo": dpo_config, "grpo": grpo_config}


def run_stage_function(stage: str, init: str, out: str, on_step=None, log=lambda message: None, run=None, **changes):
    """Call the library function of a post-training stage on the micro model."""
    import importlib

    function = getattr(importlib.import_module(f"xgen_core.posttrain.{stage}"), stage)
    return function(init, out, STAGE_CONFIGS[stage](**changes), MICRO_TRAIN, MESH, run or run_config(),
                    log=log, on_step=on_step)


KILLED_RUN = r"""
import os, signal, sys, time
sys.path.insert(0, {repo_root!r})
from xgen_core.train.host import configure_cpu_training
configure_cpu_training()
from tests.posttrain.fixtures import run_stage_function

def kill_at(record):
    if record["step"] == {kill_step}:
        # Checkpoints are written in the background: kill once the previous one is finalized (renamed from its
        # tmp folder), so the resume has a known step to start from however loaded the machine is.
        saved = os.path.join({out!r}, "checkpoints", str({kill_step} - 1))
        deadline = time.monotonic() + 600
        while not os.path.isdir(saved) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)

run_stage_function({stage!r}, {init!r}, {out!r}, on_step=kill_at)
"""


def kill_then_resume(stage: str, init: str, out: Path, kill_step: int) -> list[str]:
    """Run `stage` in a subprocess SIGKILLed after step `kill_step`, then again here; the log of the second run."""
    import subprocess
    import sys

    repo_root = str(Path(__file__).resolve().parents[2])
    script = KILLED_RUN.format(repo_root=repo_root, stage=stage, init=init, out=str(out), kill_step=kill_step)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-3000:]
    messages = []
    run_stage_function(stage, init, str(out), log=messages.append)
    return messages
