"""xgen_data_refresh: new crawl files in, curated data out. Trigger with `inputs` = the new snapshot's files."""

from airflow.sdk import Param

from operators.dag_factory import stage_dag
from xgen_core.stages import pipeline_order

CURATION = [stage for stage in pipeline_order() if stage.group == "data" and stage.name != "sample_corpus"]

dag = stage_dag(
    "xgen_data_refresh",
    CURATION,
    "Ingest new crawl files (JSONL / Parquet / WET) and refresh the curated layers built on them.",
    extra_params={
        "inputs": Param([], type="array", items={"type": "string"},
                        description="crawl files or folders to ingest; empty = the profile's ingest.inputs"),
    },
    # Every curation task gets the override: the ingest inputs decide ingest's version, which the downstream
    # stages resolve to find their input.
    param_overrides={stage.name: {"inputs": "ingest.inputs"} for stage in CURATION},
)
