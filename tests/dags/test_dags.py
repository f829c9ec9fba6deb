"""The DAGs parse cleanly, cheaply, and run the pipeline through Airflow (dag.test on a migrated database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xgen_core import artifacts
from xgen_core.stages import pipeline_order

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory):
    """A migrated SQLite metadata database in a temp AIRFLOW_HOME, set before Airflow is first imported."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    os.environ.update(env)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                   capture_output=True, env={**os.environ, **env}, timeout=300)
    return home


def test_dagbag_loads_with_zero_import_errors(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert {"xgen_end_to_end", "xgen_data_refresh"} <= set(bag.dag_ids)
    end_to_end = bag.get_dag("xgen_end_to_end")
    assert [t.task_id for t in end_to_end.topological_sort()][-1] == "report"
    assert {t.task_id for t in end_to_end.tasks} == {s.name for s in pipeline_order()} | {"report"}
    assert end_to_end.get_task("ingest").upstream_task_ids == {"sample_corpus"}
    refresh = bag.get_dag("xgen_data_refresh")
    first = [t for t in refresh.tasks if not t.upstream_task_ids]
    assert [t.task_id for t in first] == ["ingest"]


def test_parsing_a_dag_file_imports_no_compute_framework(airflow_db):
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = sorted({'jax', 'pyspark', 'flax', 'tensorflow', 'torch'} & set(sys.modules)); print(heavy)"
    )
    for dag_file in DAGS.glob("*.py"):
        result = subprocess.run([sys.executable, "-c", probe, str(dag_file)], capture_output=True, text=True,
                                timeout=120, cwd=DAGS)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().splitlines()[-1] == "[]", f"{dag_file.name} imports {result.stdout}"


def test_operator_argv_carries_profile_run_and_overrides():
    from operators.stage_operator import artifact_from_output, stage_argv

    argv = stage_argv("data_jobs.ingest", {"profile": "tiny", "root": "/r", "inputs": ["/a b"], "overrides": ["seed=3"]},
                      "manual__2026-01-01T00:00:00+00:00", {"inputs": "ingest.inputs"})
    assert argv == ["data_jobs.ingest", "--profile", "tiny", "--run-id", "manual__2026-01-01T00:00:00+00:00",
                    "--root", "/r", 'ingest.inputs=["/a b"]', "seed=3"]
    assert artifact_from_output("ingest", ["noise", "ingest: built /r/ingest-1"]) == "/r/ingest-1"


def test_data_refresh_dag_runs_ingest_on_the_sample_corpus(airflow_db, tmp_path, small_config):
    from airflow.dag_processing.dagbag import DagBag

    from xgen_core.stages import run_stage

    root = tmp_path / "artifacts"
    corpus = run_stage(small_config(root=str(root)), "sample_corpus", "prep")
    dag = DagBag(dag_folder=str(DAGS)).get_dag("xgen_data_refresh")
    dag_run = dag.test(run_conf={"root": str(root), "inputs": [corpus.uri], "overrides": []})
    assert dag_run.state == "success"
    ingested = sorted(p for p in root.glob("ingest-*") if artifacts.is_committed(str(p)))
    assert len(ingested) == 1
    manifest = artifacts.read_manifest(str(ingested[0]))
    assert manifest["external_inputs"] == [corpus.uri]
    assert manifest["counts"]["records_good"] == corpus.manifest["counts"]["documents"]
    run_dirs = list((root / "runs").iterdir())
    report = [d for d in run_dirs if (d / "report.md").exists()]
    assert len(report) == 1 and "## ingest" in (report[0] / "report.md").read_text()
