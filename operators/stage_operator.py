"""XgenStageOperator: runs one stage's entrypoint for the DAG run, on a chosen backend."""

from __future__ import annotations

import json
from typing import Any

from airflow.sdk import BaseOperator

from operators.backends import backend_for
from xgen_core.stages import get_stage


class XgenStageOperator(BaseOperator):
    """One task = one stage. The task id is the stage name; the DAG run's params choose profile and overrides.

    `param_overrides` maps a DAG param to a config key, e.g. {"inputs": "ingest.inputs"}: the refresh DAG's
    list of new crawl files becomes the ingest stage's input list.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, stage: str, param_overrides: dict[str, str] | None = None, **kwargs: Any):
        self.stage = get_stage(stage)
        self.param_overrides = param_overrides or {}
        kwargs.setdefault("task_id", self.stage.name)
        super().__init__(**kwargs)

    def execute(self, context) -> str | None:
        params = context["params"]
        argv = stage_argv(self.stage.entrypoint_module, params, context["run_id"], self.param_overrides)
        backend = backend_for(params.get("profile") or "tiny", list(params.get("overrides") or []))
        lines = backend.run(argv, self.log.info)
        return artifact_from_output(self.stage.name, lines)


def stage_argv(module: str, params: dict, run_id: str, param_overrides: dict[str, str]) -> list[str]:
    argv = [module, "--profile", params.get("profile") or "tiny", "--run-id", run_id]
    if params.get("root"):
        argv += ["--root", params["root"]]
    for param, key in param_overrides.items():
        value = params.get(param)
        if value not in (None, "", []):
            argv.append(f"{key}={json.dumps(value)}")
    argv += list(params.get("overrides") or [])
    return argv


def artifact_from_output(stage: str, lines: list[str]) -> str | None:
    """The entrypoint's last line says `<stage>: built|reused <uri>`: that URI goes to XCom."""
    for line in reversed(lines):
        if line.startswith(f"{stage}: "):
            return line.split()[-1]
    return None
