"""`xgen train compile`: the tiny pretrain step compiled ahead of time for a 4-chip v5p slice by libtpu."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from xgen_core.config import load_config
from xgen_core.errors import XgenError
from xgen_core.train import compile as aot

TOPOLOGY = "v5p:2x2x1"


def _compile(*overrides: str, stage: str = "pretrain") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "xgen_core.cli", "train", "compile", "--profile", "tiny", "--stage", stage,
               "--topology", TOPOLOGY, "--json", *overrides]
    env = {key: value for key, value in os.environ.items() if key not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _report(done: subprocess.CompletedProcess) -> dict:
    if done.returncode == 2 and "cannot describe TPU topology" in done.stderr:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.stdout.strip(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fitting():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    done = _compile()
    return done, _report(done)


@pytest.fixture(scope="module")
def absurd_batch(fitting):
    done = _compile("train.batch_size=131072", "train.grad_accum_steps=1")
    return done, _report(done)


@pytest.fixture(scope="module")
def extension():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    # extend_128k's 8,192-token rows, one per step, split over the slice's 4 chips (2,048 tokens each)
    done = _compile("train_run.context_parallel.extend_128k=4", stage="extend_128k")
    return done, _report(done)


@pytest.fixture(scope="module")
def grpo():
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    done = _compile(stage="grpo")
    return done, _report(done)


def test_tiny_pretrain_step_compiles_for_v5p_and_fits(fitting):
    done, report = fitting
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"stage", "profile", "topology", "devices", "fits", "bytes", "hbm_bytes", "flops_per_step",
            "model_flops_per_step", "tokens_per_step"} <= set(report)
    assert (report["stage"], report["profile"], report["topology"], report["devices"]) == (
        "pretrain", "tiny", TOPOLOGY, 4)
    assert report["fits"] is True
    assert {"arguments", "outputs", "temporaries", "total"} <= set(report["bytes"])
    assert 0 < report["bytes"]["arguments"] <= report["bytes"]["total"] < report["hbm_bytes"] == 95 * 1024**3
    assert report["tokens_per_step"] == 16 * 256
    assert report["mesh"] == {"data": 1, "fsdp": 4, "context": 1, "tensor": 1}  # fsdp -1 sized to the slice


def test_pallas_splash_kernel_is_what_was_compiled(fitting):
    # model.attention_impl auto picks splash for a TPU target: lowered by Mosaic under shard_map, not interpreted
    assert fitting[1]["attention_impl"] == "splash"


def test_donated_state_is_aliased_not_counted_twice(fitting):
    memory = fitting[1]["bytes"]
    assert memory["aliased"] > 0.9 * memory["outputs"]


def test_compiled_flops_agree_with_the_model_count(fitting):
    report = fitting[1]
    # The remainder is XLA attention's diagonal query blocks: at 256 tokens in blocks of 128 it computes 3/4
    # of the score matrix where the model counts the causal half.
    assert report["flops_per_step"] == pytest.approx(report["model_flops_per_step"], rel=0.06)


def test_absurd_batch_does_not_fit_and_says_what_to_shrink(absurd_batch):
    done, report = absurd_batch
    assert done.returncode == 3
    assert report["fits"] is False
    assert report["bytes"]["total"] > report["hbm_bytes"]
    assert any("logits" in line for line in report["largest_buffers"])
    assert any(line.startswith("train.grad_accum_steps") for line in report["shrink_with"])
    assert "does not fit on v5p:2x2x1" in done.stderr and "logits" in done.stderr


def test_unknown_topology_and_stage_are_clear_errors():
    with pytest.raises(XgenError, match="expected <generation>:<shape>"):
        aot.chip_for("v9z:4x4")
    with pytest.raises(XgenError, match="unknown stage"):
        aot.step_builder("pretrian")
    with pytest.raises(XgenError, match="no compile check yet"):
        aot.step_builder("dedup")


def test_implied_step_time_at_peak_and_half_peak():
    target = aot.CompileTarget(step=None, args=(), arg_names=(), tokens_per_step=4096 * 1024,
                               model_flops_per_step=1.0e17, n_layers=1, scan_layers=False, loop_trips=1,
                               mesh_axes={}, attention_impl="xla")
    implied = aot.implied_throughput(target, aot.CHIPS["v5p"], 1024)
    assert implied["step_seconds"]["mfu_100"] == pytest.approx(1.0e17 / (1024 * 459e12))
    assert implied["step_seconds"]["mfu_50"] == pytest.approx(2 * implied["step_seconds"]["mfu_100"])
    assert implied["tokens_per_s_per_chip"]["mfu_50"] == pytest.approx(
        4096 * 1024 / implied["step_seconds"]["mfu_50"] / 1024)


def test_the_extension_step_compiles_with_each_sequence_split_over_the_slice(extension):
    done, report = extension
    assert done.returncode == 0, done.stderr[-3000:]
    assert (report["stage"], report["fits"]) == ("extend_128k", True)
    assert report["mesh"] == {"data": 1, "fsdp": 1, "context": 4, "tensor": 1}
    assert report["attention_impl"] == "blockwise"  # the kernel that runs under context parallelism
    assert report["tokens_per_step"] == 1 * 8192
    assert 0 < report["bytes"]["total"] < report["hbm_bytes"]
    assert report["flops_per_step"] is None and report["flops_method"].startswith("not counted: context")


def test_an_extension_batch_that_cannot_split_is_a_clear_error():
    # one 8,192-token row cannot split over 4 data x fsdp devices: the error names the context-parallel key
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    done = _compile(stage="extend_128k")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "extend_128k.batch_size 1" in done.stderr and "train_run.context_parallel.extend_128k = 1" in done.stderr


@pytest.mark.parametrize("stage, overrides, rows, tokens", [
    ("sft", (), 16, 16 * 256),  # tiny: 16 packed rows of 256 + 1 tokens
    ("dpo", ("dpo.max_len=256",), 2 * 16, 2 * 16 * 256),  # chosen and rejected rows, read 256 positions each
])
def test_post_training_steps_compile_for_v5p_and_fit(stage, overrides, rows, tokens):
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    done = _compile("--memory-only", *overrides, stage=stage)
    report = _report(done)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (report["stage"], report["fits"], report["attention_impl"]) == (stage, True, "splash")
    assert report["tokens_per_step"] == tokens
    assert report["mesh"] == {"data": 1, "fsdp": 4, "context": 1, "tensor": 1}
    assert 0 < report["bytes"]["arguments"] < report["bytes"]["total"] < report["hbm_bytes"]
    assert report["bytes"]["aliased"] > 0.9 * report["bytes"]["outputs"]  # the state is donated as in training


def test_a_dpo_row_the_pallas_kernel_cannot_take_is_caught_here():
    # tiny's dpo.max_len 160 is fine for XLA attention on a CPU; splash on a TPU needs multiples of 128
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    done = _compile("--memory-only", stage="dpo")
    assert done.returncode == 2
    assert "Pallas attention needs a sequence length that is a multiple of 128, got 160" in done.stderr


def test_grpo_policy_step_and_sampler_compile_for_v5p_and_fit(grpo):
    done, report = grpo
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"stage", "profile", "topology", "devices", "fits", "bytes", "hbm_bytes", "flops_per_step",
            "model_flops_per_step", "tokens_per_step"} <= set(report)
    assert (report["stage"], report["devices"], report["fits"], report["attention_impl"]) == ("grpo", 4, True, "splash")
    # tiny's prompts x G rollouts of 256 prompt + tiny's new tokens, read as 384 positions (splash: a multiple of 128)
    tiny = load_config("tiny").grpo
    rollouts = tiny.prompts_per_step * tiny.group_size
    assert report["tokens_per_step"] == rollouts * 384
    assert report["flops_per_step"] == pytest.approx(report["model_flops_per_step"], rel=0.06)
    assert set(report["programs"]) == {"prefill", "decode"}
    for program in report["programs"].values():
        assert program["fits"] is True
        # the optimizer state stays on the chip while the sampler runs on the parameters
        assert program["total_with_resident"] == program["bytes"]["total"] + program["resident_bytes"] > 0
        assert program["resident_bytes"] > 0
    assert report["programs"]["decode"]["tokens_per_call"] == rollouts * tiny.max_new_tokens
