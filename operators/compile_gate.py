"""The compile gate: a TPU stage on the `kubernetes` backend waits for its step to be compiled ahead of time for the
slice it will get (`xgen train compile`, xgen_core/train/compile.py), run in a CPU pod, so a step that cannot fit
fails the DAG run in minutes, before a slice is requested.

The gate task (`<stage>_compile_check`) has no upstream task, so it starts with the run, and its stage waits for
it. It compiles with the run's own profile and overrides for the stage's slice (`orchestration.kubernetes.tpu`, or
the stage's entry in `tpu_topologies`); the compile exits non-zero when the step does not fit (naming the largest buffers and the config keys that shrink
them), which fails the gate and leaves the stage `upstream_failed`. On any other backend (the CPU `local` one of
`make run`, docker) there is no slice to fit and the gate skips itself and says so; the stage then runs as usual
(stage tasks take `none_failed`). Only stages with a compile builder (STEP_BUILDERS) are gated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from airflow.sdk import BaseOperator

from operators import specs
from operators.stage_operator import RunOverrides
from xgen_core.config import XgenConfig
from xgen_core.stages import Stage, get_stage
from xgen_core.train.compile import STEP_BUILDERS

GATE_SUFFIX = "_compile_check"
# GKE's cloud.google.com/gke-tpu-accelerator label -> the generation `xgen train compile --topology` names.
ACCELERATOR_GENERATIONS = {"tpu-v5p-slice": "v5p", "tpu-v6e-slice": "v6e", "tpu-v5-lite-podslice": "v5e"}


def gated(stage: Stage) -> bool:
    return stage.resources == "tpu" and stage.name in STEP_BUILDERS


def gate_task_id(stage_name: str) -> str:
    return f"{stage_name}{GATE_SUFFIX}"


def slice_topology(cfg: XgenConfig, stage: str) -> str:
    """The slice `stage` gets on Kubernetes, as `xgen train compile` names it (v5p:8x8x16)."""
    tpu = cfg.orchestration.kubernetes.tpu_for(stage)
    if tpu.accelerator not in ACCELERATOR_GENERATIONS:
        raise ValueError(f"orchestration.kubernetes.tpu.accelerator {tpu.accelerator!r}: the compile check knows "
                         f"{', '.join(ACCELERATOR_GENERATIONS)}")
    return f"{ACCELERATOR_GENERATIONS[tpu.accelerator]}:{tpu.topology}"


def compile_argv(stage: Stage, profile: str, topology: str, overrides: list[str]) -> list[str]:
    """`python -m` argv of the check: memory only (the FLOPs count compiles more copies and decides nothing)."""
    return ["xgen_core.cli", "train", "compile", "--profile", profile, "--stage", stage.name,
            "--topology", topology, "--memory-only", *overrides]


def compile_check_spec(stage: Stage, argv: list[str], cfg: XgenConfig) -> dict:
    """A CPU pod (no TPU node selector) in the pipeline image, with the compile pod's resources."""
    check = dataclasses.replace(stage, name=gate_task_id(stage.name), resources="cpu")
    spec = specs.render("kubernetes", check, argv, cfg)
    resources = cfg.orchestration.kubernetes.compile
    limits = {"cpu": resources.cpu, "memory": resources.memory}
    spec["manifest"]["spec"]["containers"][0]["resources"] = {"requests": dict(limits), "limits": limits}
    return spec


class CompileGateOperator(BaseOperator):
    """`<stage>_compile_check`: fails when the stage's step does not fit its slice; skips off Kubernetes."""

    ui_color = "#fdf0d5"

    def __init__(self, *, stage: str, run_overrides: RunOverrides | None = None, **kwargs: Any):
        self.stage = get_stage(stage)
        self.run_overrides = run_overrides
        self._operator = None
        kwargs.setdefault("task_id", gate_task_id(self.stage.name))
        super().__init__(**kwargs)

    def execute(self, context) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        from xgen_core.config import load_config

        params = context["params"]
        selected = list(params.get("stages") or [])
        if selected and self.stage.name not in selected:
            raise AirflowSkipException(f"{self.stage.name} is not in the run's stages: nothing to check")
        profile = params.get("profile") or "tiny"
        overrides = [*(self.run_overrides(self, context) if self.run_overrides else []),
                     *list(params.get("overrides") or [])]
        cfg = load_config(profile, overrides)
        backend = cfg.orchestration.backend_of(self.stage.group)
        if backend != "kubernetes":
            raise AirflowSkipException(
                f"compile check of {self.stage.name} skipped: it runs on the {backend} backend, not on a TPU slice "
                f"(the check gates TPU stages on kubernetes)")
        topology = slice_topology(cfg, self.stage.name)
        spec = compile_check_spec(self.stage, compile_argv(self.stage, profile, topology, overrides), cfg)
        self.log.info("compiling %s for %s in a CPU pod: %s", self.stage.name, topology, specs.summary(spec))
        from operators.backends import provider_operator

        self._operator = provider_operator("kubernetes", spec, self.task_id)
        self._operator.execute(context)  # the pod exits 3 when the step does not fit: this task fails
        self.log.info("%s fits on %s", self.stage.name, topology)

    def on_kill(self) -> None:
        if self._operator is not None:
            self._operator.on_kill()
