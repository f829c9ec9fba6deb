"""Airflow DAG xgen_end_to_end: every stage in order, then the run report (what `make run` triggers)."""

from operators.dag_factory import stage_dag
from xgen_core.stages import pipeline_order

dag = stage_dag(
    "xgen_end_to_end",
    pipeline_order(),
    "Raw crawl to a trained model: sample corpus -> ingest -> ... -> report. Finished stage versions are reused.",
)
