"""The DAG family, built from the stage table: each stage lands in one family DAG, and in xgen_end_to_end.

Families, in order: xgen_data_refresh (curation) -> xgen_pretrain -> xgen_length_extension -> xgen_posttrain ->
xgen_eval. A stage's family comes from its group and name (FAMILY_RULES), and is never earlier than its upstreams'
families, so a new row in xgen_core/stages.py wires itself in. A family DAG exists only when it has stages. Each
family DAG ends in the run report, which emits the family's Asset with the artifact URIs in the event's extra; the
next family DAG is scheduled on that Asset (and can be triggered by hand).

DAG-level settings (refresh cron, retries, timeouts) are read when the DAG file is parsed, from the profile named
by XGEN_DAG_PROFILE (default tiny); what a task runs (backend, stage config) comes from the run's own params.
A TPU stage with a compile check waits for its `<stage>_compile_check` task (operators/compile_gate.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param

from operators.backends import BACKENDS
from operators.compile_gate import CompileGateOperator, gated
from operators.stage_operator import XgenStageOperator, stage_failure_callback
from xgen_core.config import CONFIG_DIR, BASE_PROFILE, load_config
from xgen_core.stages import STAGES, Stage, pipeline_order


@dataclass(frozen=True)
class Family:
    dag_id: str
    asset: Asset
    description: str


FAMILIES = (
    Family("xgen_data_refresh", Asset(name="xgen_curated_dataset", uri="xgen://curated-dataset"),
           "New crawl snapshot in, curated data out: ingest (appended as a new partition) -> dedup (reusing "
           "signatures) -> quality -> signals -> mixture."),
    Family("xgen_pretrain", Asset(name="xgen_pretrained_model", uri="xgen://pretrained-model"),
           "Tokenizer, packing and the curriculum pretraining on the newest curated dataset."),
    Family("xgen_length_extension", Asset(name="xgen_long_context_model", uri="xgen://long-context-model"),
           "Context length extension of the pretrained model."),
    Family("xgen_posttrain", Asset(name="xgen_posttrained_model", uri="xgen://posttrained-model"),
           "Post-training (SFT, preference and RL stages) of the long-context model."),
    Family("xgen_eval", Asset(name="xgen_eval_results", uri="xgen://eval-results"),
           "Evaluations of the newest model."),
)
FAMILY_INDEX = {family.dag_id: index for index, family in enumerate(FAMILIES)}


def own_family(stage: Stage) -> str:
    """The family a stage's group and name put it in, before its upstreams are considered."""
    if stage.group == "data":
        return "xgen_data_refresh"
    if stage.group == "eval":
        return "xgen_eval"
    if stage.name.startswith(("extend", "length")) or stage.group in ("extend", "length_extension"):
        return "xgen_length_extension"
    if stage.init_upstream or stage.group in ("posttrain", "post_train"):  # fine-tunes another stage's model
        return "xgen_posttrain"
    return "xgen_pretrain"


def families(stages: list[Stage] | None = None) -> dict[str, list[Stage]]:
    """Family DAG id -> its stages in table order. Data sources with no upstream (the sample corpus stand-in for
    a crawl) belong to no family: the refresh DAG ingests crawl files, xgen_end_to_end runs the sources."""
    placed: dict[str, str] = {}
    members: dict[str, list[Stage]] = {family.dag_id: [] for family in FAMILIES}
    for stage in stages if stages is not None else pipeline_order():
        if stage.group == "data" and not stage.upstream:
            continue
        family = max([own_family(stage), *(placed[u] for u in stage.upstream if u in placed)], key=FAMILY_INDEX.get)
        placed[stage.name] = family
        members[family].append(stage)
    return {dag_id: stage_list for dag_id, stage_list in members.items() if stage_list}


def family(dag_id: str) -> Family:
    return next(f for f in FAMILIES if f.dag_id == dag_id)


def profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != BASE_PROFILE)


# A param that may be left empty also takes null: the UI's trigger form marks a param whose JSON-schema type
# lacks "null" as required and will not trigger while it is empty (e.g. backend "", the profile's own backends).
OPTIONAL = {kind: ["null", kind] for kind in ("string", "array", "object", "boolean")}


def common_params(stages: list[Stage]) -> dict:
    """What a user gives a run (from the UI's trigger form or the REST API's `conf`), checked by JSON schema."""
    return {
        "profile": Param("tiny", type="string", enum=profiles(), description="config profile from configs/"),
        "root": Param(os.environ.get("XGEN_ARTIFACTS", ""), type=OPTIONAL["string"],
                      description="artifact root (file path or gs://...); default $XGEN_ARTIFACTS, empty = the profile's"),
        "overrides": Param([], type=OPTIONAL["array"], items={"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*=.*$"},
                           description="config overrides key=value, e.g. train_run.max_steps=20"),
        "backend": Param("", type=OPTIONAL["string"], enum=[None, "", *BACKENDS],
                         description="run every stage on this backend; empty = orchestration.backend(s) of the profile"),
        "stages": Param([], type=OPTIONAL["array"], items={"type": "string", "enum": [s.name for s in stages]},
                        uniqueItems=True, description="run only these stages (the others are skipped and their "
                        "committed artifacts used); empty = all"),
        "upstream_artifacts": Param({}, type=OPTIONAL["object"], additionalProperties={"type": "string"},
                                    description="stage -> artifact URI for upstreams outside this DAG; empty = the "
                                    "triggering Asset event's, else the config's"),
    }


def dag_settings():
    return load_config(os.environ.get("XGEN_DAG_PROFILE", "tiny")).orchestration


def task_settings(stage_name: str, orchestration) -> dict:
    return {
        "retries": orchestration.retry.retries,
        "retry_delay": timedelta(seconds=orchestration.retry.delay_s),
        "retry_exponential_backoff": orchestration.retry.backoff,
        "max_retry_delay": timedelta(seconds=orchestration.retry.max_delay_s),
        "execution_timeout": timedelta(seconds=orchestration.timeout_s(stage_name)),
        "on_failure_callback": stage_failure_callback,
        "trigger_rule": "none_failed",  # a stage left out by the `stages` param is skipped, not a blocker
    }


def selection_and_backend(operator, context) -> list[str]:
    """Overrides every family DAG applies: the `backend` param (one backend for all groups)."""
    backend = context["params"].get("backend")
    return [f"orchestration.backend={backend}", "orchestration.backends={}"] if backend else []


def stage_dag(dag_id: str, stages: list[Stage], description: str, extra_params: dict | None = None,
              param_overrides: dict[str, dict[str, str]] | None = None, outlets: list[Asset] | None = None,
              run_overrides=None, inlets: list[Asset] | None = None, **dag_kwargs) -> DAG:
    orchestration = dag_settings()
    with DAG(
        dag_id=dag_id,
        description=description,
        start_date=datetime(2026, 1, 1),
        schedule=dag_kwargs.pop("schedule", None),
        catchup=False,
        max_active_runs=dag_kwargs.pop("max_active_runs", 1),
        params={**common_params(stages), **(extra_params or {})},
        tags=["xgen"],
        doc_md=description,
        **dag_kwargs,
    ) as dag:
        names = {stage.name for stage in stages}
        overrides = run_overrides or selection_and_backend
        tasks = {
            stage.name: XgenStageOperator(
                stage=stage.name, param_overrides=(param_overrides or {}).get(stage.name),
                run_overrides=overrides, inlets=list(inlets or []), **task_settings(stage.name, orchestration),
            )
            for stage in stages
        }
        for stage in stages:
            for upstream in stage.upstream:
                if upstream in names:
                    tasks[upstream] >> tasks[stage.name]
        for stage in filter(gated, stages):
            # No retries: a step that does not fit will not fit on a second try.
            settings = {**task_settings(stage.name, orchestration), "retries": 0}
            CompileGateOperator(stage=stage.name, run_overrides=overrides, **settings) >> tasks[stage.name]
        report = XgenStageOperator(stage="report", run_overrides=overrides, outlets=list(outlets or []),
                                   inlets=list(inlets or []),
                                   artifact_tasks=tuple(tasks), **task_settings("report", orchestration))
        list(tasks.values()) >> report
    return dag


def family_dag(dag_id: str) -> DAG | None:
    """The family DAG `dag_id` (None while the stage table has no stages for it): the refresh DAG on its cron,
    each later one on the Asset of the family before it that has stages."""
    present = families()
    if dag_id not in present:
        return None
    this = family(dag_id)
    stages = present[dag_id]
    if dag_id == "xgen_data_refresh":
        from operators.refresh import REFRESH_PARAMS, refresh_overrides

        return stage_dag(dag_id, stages, this.description, extra_params=REFRESH_PARAMS, outlets=[this.asset],
                         inlets=[this.asset], run_overrides=refresh_overrides,
                         schedule=dag_settings().refresh.schedule)
    earlier = [family(other).asset for other in present if FAMILY_INDEX[other] < FAMILY_INDEX[dag_id]]
    return stage_dag(dag_id, stages, this.description, outlets=[this.asset],
                     schedule=earlier[-1:] or None)
