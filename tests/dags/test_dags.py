"""The DAGs parse cleanly, cheaply, and run the pipeline through Airflow (dag.test on a migrated database)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xgen_core import artifacts
from xgen_core.stages import pipeline_order
from xgen_core.train.compile import STEP_BUILDERS

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
    checks = {f"{s.name}_compile_check" for s in pipeline_order() if s.resources == "tpu" and s.name in STEP_BUILDERS}
    assert {t.task_id for t in end_to_end.tasks} == {s.name for s in pipeline_order()} | {"report"} | checks
    assert end_to_end.get_task("ingest").upstream_task_ids == {"sample_corpus"}
    refresh = bag.get_dag("xgen_data_refresh")
    first = [t for t in refresh.tasks if not t.upstream_task_ids]
    assert [t.task_id for t in first] == ["ingest"]


def test_the_family_dags_are_scheduled_chained_by_assets_and_retry_with_backoff(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from operators.dag_factory import families
    from xgen_core.config import load_config

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(families()) | {"xgen_end_to_end"} == set(bag.dag_ids)  # a family DAG exists iff it has stages
    orchestration = load_config("tiny").orchestration
    refresh, pretrain = bag.get_dag("xgen_data_refresh"), bag.get_dag("xgen_pretrain")
    assert refresh.timetable.expression == orchestration.refresh.schedule == "0 3 * * 1"
    assert refresh.catchup is False
    curated = refresh.get_task("report").outlets
    assert [a.name for a in curated] == ["xgen_curated_dataset"]
    assert [a.name for a in pretrain.timetable.asset_condition.objects] == ["xgen_curated_dataset"]
    assert [a.name for a in pretrain.get_task("report").outlets] == ["xgen_pretrained_model"]
    pretrain_task = pretrain.get_task("pretrain")
    assert pretrain_task.execution_timeout.total_seconds() == orchestration.timeout_s("pretrain") == 86400
    assert pretrain_task.retries == orchestration.retry.retries
    assert pretrain_task.retry_exponential_backoff == orchestration.retry.backoff
    assert pretrain_task.on_failure_callback


def test_each_tpu_stage_with_a_compile_waits_for_its_check_which_starts_with_the_run(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    from operators.compile_gate import CompileGateOperator

    bag = DagBag(dag_folder=str(DAGS))
    gated = {name for name in STEP_BUILDERS}
    seen = set()
    for dag_id in ("xgen_end_to_end", "xgen_pretrain", "xgen_length_extension", "xgen_posttrain"):
        dag = bag.get_dag(dag_id)
        for task in dag.tasks:
            stage = getattr(task, "stage", None)
            if stage is None or isinstance(task, CompileGateOperator):
                continue
            check = f"{stage.name}_compile_check"
            if stage.resources == "tpu" and stage.name in gated:
                gate = dag.get_task(check)
                assert isinstance(gate, CompileGateOperator) and gate.stage.name == stage.name
                assert check in task.upstream_task_ids
                assert gate.upstream_task_ids == set()  # runs at the start of the run, not after the data stages
                assert gate.downstream_task_ids == {stage.name}
                assert gate.retries == 0
                seen.add(stage.name)
            else:
                assert check not in dag.task_ids
    assert {"pretrain", "extend_32k", "extend_128k"} <= seen == gated & seen


def test_params_are_checked_by_json_schema(airflow_db):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.param import ParamsDict

    dag = DagBag(dag_folder=str(DAGS)).get_dag("xgen_data_refresh")

    def check(conf):
        params = ParamsDict(dict(dag.params.items()))  # copies the Params with their schemas
        params.update(conf)
        return params.validate()

    assert check({"profile": "tiny", "stages": ["ingest"], "snapshot": "CC-MAIN-2025-05"})["snapshot"] == "CC-MAIN-2025-05"
    for bad in ({"profile": "nope"}, {"stages": ["pretrain"]}, {"backend": "mars"}, {"overrides": ["no equals"]},
                {"snapshot": "../escape"}):
        with pytest.raises(Exception, match="Invalid input for param"):
            check(bad)


def test_stage_rows_land_in_their_family_and_after_their_upstreams():
    from operators.dag_factory import families

    placed = {dag_id: [s.name for s in stages] for dag_id, stages in families().items()}
    assert placed["xgen_data_refresh"] == ["ingest", "dedup", "quality_train", "signals", "mixture"]
    assert placed["xgen_pretrain"] == ["tokenizer", "pack", "pretrain"]
    assert placed["xgen_length_extension"] == ["extend_32k", "extend_128k"]
    assert placed["xgen_posttrain"] == ["sft", "dpo", "grpo", "export_hf"]  # export_hf follows its upstream grpo
    assert placed["xgen_eval"] == ["ruler", "math_eval", "humaneval"]


def test_the_refresh_names_its_snapshot_and_appends_to_the_newest_other_snapshot():
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from operators.refresh import previous_curated, snapshot_of_run

    monday = datetime(2026, 1, 5, 3, tzinfo=timezone.utc)
    assert snapshot_of_run({"data_interval_start": monday}, "CC-MAIN-%Y-%V") == "CC-MAIN-2026-02"
    manual = {"data_interval_start": None, "dag_run": SimpleNamespace(run_after=monday)}
    assert snapshot_of_run(manual, "CC-MAIN-%Y-%V") == "CC-MAIN-2026-02"
    event = lambda snapshot, root: SimpleNamespace(extra={"snapshot": snapshot, "artifacts": {  # noqa: E731
        "ingest": f"{root}/ingest-{snapshot}", "dedup": f"{root}/dedup-{snapshot}"}})
    events = [event("W1", "/a"), event("W2", "/a"), event("W3", "/other"), event("W4", "/a")]
    assert previous_curated(events, "W5", "/a") == {"ingest": "/a/ingest-W4", "dedup": "/a/dedup-W4", "snapshot": "W4"}
    assert previous_curated(events, "W4", "/a")["snapshot"] == "W2"  # a cleared task passes its own run's event over
    assert previous_curated(events, "W9", "/nothing") is None


def test_the_failure_callback_names_stage_artifact_and_error_line(caplog):
    from types import SimpleNamespace

    from operators.stage_operator import XgenStageOperator, stage_failure_callback

    task = XgenStageOperator(stage="dedup")
    context = {"task": task, "params": {"profile": "tiny", "root": "/srv/art"}, "run_id": "manual__1",
               "ti": SimpleNamespace(try_number=2),
               "exception": RuntimeError("Traceback...\nerror: dedup: input ingest-1 is not committed")}
    with caplog.at_level("ERROR"):
        stage_failure_callback(context)
    message = [r.getMessage() for r in caplog.records if "xgen stage" in r.getMessage()][-1]
    assert message.startswith("xgen stage dedup failed (run manual__1, try 2): artifact /srv/art/dedup-")
    assert message.endswith(": error: dedup: input ingest-1 is not committed")


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
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.source_dag_id == "xgen_data_refresh"]
    extra = events[-1].extra
    assert extra["artifacts"]["ingest"] == str(ingested[0]) and set(extra["artifacts"]) >= {"dedup", "mixture"}
    assert extra["snapshot"].startswith("CC-MAIN-")
    run_dirs = list((root / "runs").iterdir())
    report = [d for d in run_dirs if (d / "report.md").exists()]
    assert len(report) == 1 and "## ingest" in (report[0] / "report.md").read_text()
