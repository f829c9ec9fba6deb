"""The compile gate (operators/compile_gate.py): a CPU pod that compiles a TPU stage's step for its slice first."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.airflow

# The tiny profile shrunk to the micro preset: its pretrain step compiles for v5p:2x2x1 in seconds.
MICRO = ["model.preset=micro", "tokenizer.vocab_size=512", "pack.seq_len=128", "model.attention_impl=xla"]


def _gate(stage: str):
    from operators.compile_gate import CompileGateOperator
    from operators.dag_factory import selection_and_backend

    return CompileGateOperator(stage=stage, run_overrides=selection_and_backend)


def _context(backend: str, overrides: list[str], stages: list[str] | None = None) -> dict:
    return {"params": {"profile": "tiny", "backend": backend, "overrides": overrides, "stages": stages or []}}


class PodOnThisMachine:
    """Stands in for KubernetesPodOperator: runs the pod's container command here and fails as the pod would."""

    specs: list[dict] = []

    def __init__(self, spec: dict):
        self.spec = spec
        PodOnThisMachine.specs.append(spec)

    def execute(self, context):
        container = self.spec["manifest"]["spec"]["containers"][0]
        env = {key: value for key, value in os.environ.items() if key not in ("JAX_PLATFORMS", "XLA_FLAGS")}
        done = subprocess.run([sys.executable, "-m", *container["args"]], capture_output=True, text=True, env=env,
                              timeout=600)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            raise RuntimeError(f"pod exited {done.returncode}: {errors[-1] if errors else done.stderr[-2000:]}")

    def on_kill(self):
        pass


@pytest.fixture
def pods_here(monkeypatch):
    import operators.backends

    PodOnThisMachine.specs = []
    monkeypatch.setattr(operators.backends, "provider_operator", lambda backend, spec, task_id: PodOnThisMachine(spec))
    return PodOnThisMachine


def test_off_kubernetes_the_check_skips_itself_and_says_why(pods_here):
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException, match="skipped: it runs on the local backend, not on a TPU slice"):
        _gate("pretrain").execute(_context("", []))
    with pytest.raises(AirflowSkipException, match="not in the run's stages"):
        _gate("pretrain").execute(_context("kubernetes", [], stages=["tokenizer"]))
    assert pods_here.specs == []


def test_the_check_is_a_cpu_pod_compiling_for_the_profiles_slice():
    from operators.compile_gate import compile_argv, compile_check_spec, slice_topology
    from xgen_core.config import load_config
    from xgen_core.stages import get_stage

    cfg = load_config("xgen-small-9b")
    stage = get_stage("extend_128k")
    assert slice_topology(cfg, "extend_128k") == "v5p:8x8x16"
    assert slice_topology(cfg, "grpo") == "v5p:4x4x4"  # its own, smaller slice (tpu_topologies)
    spec = compile_check_spec(stage, compile_argv(stage, "xgen-small-9b", "v5p:8x8x16", ["seed=1"]), cfg)
    pod = spec["manifest"]
    assert pod["kind"] == "Pod" and "nodeSelector" not in pod["spec"]  # a CPU node, not the slice
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["xgen_core.cli", "train", "compile", "--profile", "xgen-small-9b", "--stage",
                                 "extend_128k", "--topology", "v5p:8x8x16", "--memory-only", "seed=1"]
    assert container["resources"]["limits"] == {"cpu": cfg.orchestration.kubernetes.compile.cpu,
                                                "memory": cfg.orchestration.kubernetes.compile.memory}
    assert "google.com/tpu" not in container["resources"]["limits"]
    assert pod["metadata"]["name"].startswith("xgen-extend-128k-compile-check-")


def test_a_step_that_does_not_fit_fails_the_check_and_one_that_fits_passes(pods_here):
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (the `tpu` extra: uv sync --extra tpu), so no TPU compile here")
    _gate("pretrain").execute(_context("kubernetes", MICRO))  # fits: returns
    with pytest.raises(RuntimeError, match="error: pretrain does not fit on v5p:2x2x1: .*logits"):
        _gate("pretrain").execute(_context("kubernetes", [*MICRO, "train.batch_size=1048576",
                                                          "train.grad_accum_steps=1"]))
    assert [spec["manifest"]["spec"]["containers"][0]["args"][8] for spec in pods_here.specs] == ["v5p:2x2x1"] * 2
