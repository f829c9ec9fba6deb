"""Builds a DAG from a slice of the stage table: one XgenStageOperator per stage, edges from `upstream`."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Param

from operators.stage_operator import XgenStageOperator
from xgen_core.stages import Stage

COMMON_PARAMS = {
    "profile": Param("tiny", type="string", description="config profile from configs/"),
    "root": Param("", type="string", description="artifact root; empty = the profile's"),
    "overrides": Param([], type="array", items={"type": "string"}, description="config overrides key=value"),
}


def stage_dag(dag_id: str, stages: list[Stage], description: str, extra_params: dict | None = None,
              param_overrides: dict[str, dict[str, str]] | None = None, **dag_kwargs) -> DAG:
    with DAG(
        dag_id=dag_id,
        description=description,
        start_date=datetime(2026, 1, 1),
        schedule=dag_kwargs.pop("schedule", None),
        catchup=False,
        params={**COMMON_PARAMS, **(extra_params or {})},
        tags=["xgen"],
        doc_md=description,
        **dag_kwargs,
    ) as dag:
        names = {stage.name for stage in stages}
        tasks = {
            stage.name: XgenStageOperator(stage=stage.name, param_overrides=(param_overrides or {}).get(stage.name))
            for stage in stages
        }
        for stage in stages:
            for upstream in stage.upstream:
                if upstream in names:
                    tasks[upstream] >> tasks[stage.name]
        report = XgenStageOperator(stage="report")
        list(tasks.values()) >> report
    return dag
