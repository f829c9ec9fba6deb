"""Airflow as users run it: api-server, scheduler, dag-processor and triggerer with LocalExecutor on PostgreSQL
(Debian's server, started here on a loopback port; SQLite with the reason printed where it cannot start), driven
through REST API v2 with a token from /auth/token, as the UI does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SMALL_CORPUS
from tests.services.services import AirflowClient, wait_for

pytestmark = [pytest.mark.service, pytest.mark.airflow, pytest.mark.slow]

RUN_S = AirflowClient.RUN_S


def write_snapshot(folder: Path, snapshot: str) -> str:
    folder.mkdir(parents=True)
    lines = [json.dumps({"text": f"{snapshot} page {i} about mills and rivers and the grain they grind for the town",
                         "url": f"https://m{i}.org/{snapshot}"}) for i in range(8)]
    (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_rest_trigger_backfill_and_clear_one_task(airflow, tmp_path):
    client, home = airflow
    root = tmp_path / "artifacts"
    # 1. a run of xgen_end_to_end triggered as the UI does (logical_date null, conf = the trigger form's params)
    conf = {"profile": "tiny", "root": str(root), "overrides": SMALL_CORPUS, "stages": ["sample_corpus", "ingest"]}
    run = client.call("POST", "/api/v2/dags/xgen_end_to_end/dagRuns", {"logical_date": None, "conf": conf})
    assert client.wait_run("xgen_end_to_end", run["dag_run_id"]) == "success"
    states = client.task_states("xgen_end_to_end", run["dag_run_id"])
    assert {task for task, (state, _) in states.items() if state == "success"} == {"sample_corpus", "ingest", "report"}
    assert {state for task, (state, _) in states.items() if task not in conf["stages"] + ["report"]} == {"skipped"}

    # 2. a backfill of xgen_data_refresh over two weekly intervals: two runs, each ingesting its own week's snapshot
    crawl = tmp_path / "crawl"
    for snapshot in ("CC-MAIN-2026-02", "CC-MAIN-2026-03"):
        write_snapshot(crawl / snapshot, snapshot)
    refresh_conf = {"profile": "tiny", "root": str(root), "stages": ["ingest", "dedup"],
                    "overrides": [*SMALL_CORPUS, f"orchestration.refresh.inputs={crawl}/{{snapshot}}"]}
    backfill = client.call("POST", "/api/v2/backfills", {
        "dag_id": "xgen_data_refresh", "from_date": "2026-01-05T00:00:00Z", "to_date": "2026-01-18T00:00:00Z",
        "reprocess_behavior": "none", "max_active_runs": 1, "dag_run_conf": refresh_conf, "run_backwards": False})
    runs = wait_for(lambda: len(found := [r for r in client.call("GET", "/api/v2/dags/xgen_data_refresh/dagRuns")[
        "dag_runs"] if r["run_type"] == "backfill"]) == 2 and found, "two backfill runs", 120, every_s=2.0)
    assert backfill["dag_id"] == "xgen_data_refresh"
    runs.sort(key=lambda r: r["logical_date"])
    assert [client.wait_run("xgen_data_refresh", r["dag_run_id"]) for r in runs] == ["success", "success"]
    ingests = sorted(root.glob("ingest-*"))
    layouts = [json.loads((p / "manifest.json").read_text()).get("layout", {}) for p in ingests]
    snapshots = sorted(len(layout.get("partitions", [])) for layout in layouts)
    assert snapshots[-1] >= 2  # the second week's ingest appended to the first week's

    # 3. clearing one task re-runs only that stage, and its finished artifact is reused
    second = runs[-1]["dag_run_id"]
    before = client.task_states("xgen_data_refresh", second)
    client.call("POST", "/api/v2/dags/xgen_data_refresh/clearTaskInstances",
                {"dry_run": False, "task_ids": ["dedup"], "dag_run_id": second, "only_failed": False,
                 "include_downstream": False, "include_upstream": False, "reset_dag_runs": True})
    wait_for(lambda: client.task_states("xgen_data_refresh", second)["dedup"] == ("success", before["dedup"][1] + 1),
             "the cleared task to run again", RUN_S, every_s=2.0)
    after = client.task_states("xgen_data_refresh", second)
    assert {task: tries for task, (_, tries) in after.items() if tries != before[task][1]} == {
        "dedup": before["dedup"][1] + 1}
    logs = list((home / "logs").rglob("*"))
    dedup_logs = [p for p in logs if p.is_file() and "task_id=dedup" in str(p) and second.replace(":", "") in
                  str(p).replace(":", "") and "attempt=" + str(before["dedup"][1] + 1) in p.name]
    assert dedup_logs and "reusing it, nothing to do" in dedup_logs[0].read_text()
