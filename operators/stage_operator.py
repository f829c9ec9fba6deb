"""XgenStageOperator: runs one stage's entrypoint for the DAG run, on the backend its stage group is given."""

from __future__ import annotations

import logging
from typing import Any, Callable

from airflow.sdk import BaseOperator

from operators.backends import backend_for
from operators.specs import stage_argv
from xgen_core.stages import get_stage

log = logging.getLogger(__name__)

RunOverrides = Callable[[Any, dict], list[str]]  # (operator, context) -> config overrides for this DAG run


class XgenStageOperator(BaseOperator):
    """One task = one stage. The task id is the stage name; the DAG run's params choose profile and overrides.

    `param_overrides` maps a DAG param to a config key, e.g. {"inputs": "ingest.inputs"}. `run_overrides` computes
    overrides from the run itself (the refresh DAG's snapshot and the artifacts it appends to); every task of a run
    must compute the same ones, since downstream stages resolve their inputs' versions from the config.
    An upstream that is not a task of this DAG comes from the `upstream_artifacts` param or from the Asset event
    that triggered the run; once a task ran on such explicit inputs, its downstream tasks take its artifact the same
    way (its version then hangs on the inputs' content, not on the config).
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, stage: str, param_overrides: dict[str, str] | None = None,
                 run_overrides: RunOverrides | None = None, artifact_tasks: tuple[str, ...] = (), **kwargs: Any):
        self.stage = get_stage(stage)
        self.param_overrides = param_overrides or {}
        self.run_overrides = run_overrides
        self.artifact_tasks = artifact_tasks  # the report task: whose artifacts the outlet Asset events carry
        self._backend = None
        kwargs.setdefault("task_id", self.stage.name)
        super().__init__(**kwargs)

    def execute(self, context) -> str | None:
        params = context["params"]
        selected = list(params.get("stages") or [])
        if selected and self.stage.name not in selected and not self.stage.run_scoped:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"{self.stage.name} is not in the run's stages ({', '.join(selected)}): "
                                       "downstream stages use its committed artifact")
        profile = params.get("profile") or "tiny"
        extra = self.run_overrides(self, context) if self.run_overrides else []
        inputs = self.explicit_inputs(context)
        argv = stage_argv(self.stage.entrypoint_module, params, context["run_id"], self.param_overrides, extra, inputs)
        self._backend = backend_for(profile, [*extra, *list(params.get("overrides") or [])], self.stage)
        lines = self._backend.run(argv, self.log.info, context)
        context["ti"].xcom_push(key="explicit_inputs", value=bool(inputs))
        uri = artifact_from_output(self.stage.name, lines)
        if self.outlets:
            self.emit_assets(context, uri, extra)
        return uri

    def on_kill(self) -> None:
        if self._backend is not None:
            self._backend.kill()

    def explicit_inputs(self, context) -> list[str]:
        tasks = set(self.dag.task_ids) if self.has_dag() else set()
        given = {**asset_artifacts(context), **(context["params"].get("upstream_artifacts") or {})}
        inputs = []
        for upstream in self.stage.upstream:
            if upstream in tasks:
                ti = context["ti"]
                if ti.xcom_pull(task_ids=upstream, key="explicit_inputs"):
                    inputs.append(f"{upstream}={ti.xcom_pull(task_ids=upstream)}")
            elif given.get(upstream):
                inputs.append(f"{upstream}={given[upstream]}")
        return inputs

    def emit_assets(self, context, report_uri: str | None, extra: list[str]) -> None:
        """Each outlet Asset event carries the run's artifact URIs (lineage from snapshot to evaluated model)."""
        ti = context["ti"]
        artifacts = {task: ti.xcom_pull(task_ids=task) for task in self.artifact_tasks}
        payload = {
            "artifacts": {task: uri for task, uri in artifacts.items() if uri},
            "profile": context["params"].get("profile") or "tiny",
            "run_id": context["run_id"],
            "report": report_uri,
            "overrides": extra,
        }
        snapshot = next((o.split("=", 1)[1].strip('"') for o in extra if o.startswith("ingest.default_snapshot=")), None)
        if snapshot:
            payload["snapshot"] = snapshot
        for asset in self.outlets:
            context["outlet_events"][asset].extra = payload
        self.log.info("asset events %s: %s", ", ".join(a.name for a in self.outlets), payload)


def asset_artifacts(context) -> dict[str, str]:
    """Stage -> artifact URI from the Asset events that triggered this run (newest last wins)."""
    found: dict[str, str] = {}
    events_by_asset = context.get("triggering_asset_events") or {}
    for events in events_by_asset.values():
        for event in events:
            found.update((event.extra or {}).get("artifacts") or {})
    return found


def artifact_from_output(stage: str, lines: list[str]) -> str | None:
    """The entrypoint's last line says `<stage>: built|reused <uri>`: that URI goes to XCom."""
    for line in reversed(lines):
        if line.startswith(f"{stage}: "):
            return line.split()[-1]
    return None


def stage_failure_callback(context) -> None:
    """The message an on-call reads: which stage, which artifact, the error line."""
    task = context["task"]
    error = str(context.get("exception") or "unknown error").strip().splitlines()
    params = context.get("params") or {}
    artifact = artifact_of(task, params)
    ti = context["ti"]
    message = (f"xgen stage {task.task_id} failed (run {context['run_id']}, try {ti.try_number}): "
               f"artifact {artifact}: {error[-1] if error else ''}")
    task.log.error(message)
    log.error(message)


def artifact_of(task, params: dict) -> str:
    """Where the stage writes (resolved from the config alone), or why that is unknown."""
    try:
        from xgen_core.config import load_config
        from xgen_core.stages import resolve

        overrides = list(params.get("overrides") or [])
        if params.get("root"):
            overrides.append(f"root={params['root']}")
        return resolve(load_config(params.get("profile") or "tiny", overrides), task.stage.name).uri
    except Exception as error:  # the callback must report the failure even when the config itself is what failed
        return f"(not resolved: {str(error).splitlines()[0] if str(error) else type(error).__name__})"
