"""Airflow as users run it: api-server, scheduler, dag-processor and triggerer with LocalExecutor on PostgreSQL
(Debian's server, started here on a loopback port; SQLite with the reason printed where it cannot start), driven
through REST API v2 with a token from /auth/token, as the UI does."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from operators.backends import group_alive
from tests.conftest import SMALL_CORPUS, _free_port

pytestmark = [pytest.mark.service, pytest.mark.airflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
RUN_S = 1500  # a DAG run on a loaded 2-core machine


def wait_for(condition, what: str, timeout_s: float):
    pause = threading.Event()
    waited = 0.0
    while waited < timeout_s:
        try:
            value = condition()
            if value:
                return value
        except (OSError, urllib.error.URLError):
            pass
        pause.wait(2.0)
        waited += 2.0
    pytest.fail(f"timed out waiting for {what}")


def start_postgres(folder: Path) -> tuple[str, list[subprocess.Popen]] | tuple[None, str]:
    """(SQLAlchemy URL, processes) of a fresh PostgreSQL cluster on loopback, or (None, why not)."""
    try:
        import asyncpg  # noqa: F401  (Airflow 3 opens an async engine on the same database)
        import psycopg2  # noqa: F401
    except ImportError as missing:
        return None, f"the PostgreSQL driver {missing.name} is not installed"
    if not (PG_BIN / "initdb").exists():
        return None, f"no PostgreSQL server at {PG_BIN}"
    data = folder / "pgdata"
    data.mkdir(parents=True)
    folder.parent.chmod(0o755)
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    if as_postgres:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    init = subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-U", "airflow", "--auth=trust"],
                          capture_output=True, text=True, timeout=300)
    if init.returncode != 0:
        return None, f"initdb failed: {init.stderr.strip().splitlines()[-1:]}"
    port = _free_port()
    server = subprocess.Popen([*as_postgres, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
                               "-h", "127.0.0.1", "-k", str(folder)], stdout=(folder / "pg.log").open("w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                    capture_output=True).returncode == 0, "PostgreSQL", 120)
    created = subprocess.run([str(PG_BIN.parent / "bin" / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                              "airflow", "airflow"], capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        return None, f"createdb failed: {created.stderr.strip()}"
    return f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow", [server]


class Airflow:
    def __init__(self, base: str, token: str):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One REST call; a 503 (the API server overloaded on a busy 2-core machine) is asked again, a few times."""
        for attempt in range(5):
            try:
                return self.call_once(method, path, body)
            except urllib.error.HTTPError as error:
                if error.code != 503 or attempt == 4:
                    raise
                print(f"{method} {path}: 503 {error.read()[:300]!r}; asking again")
                threading.Event().wait(10)
        raise AssertionError("unreachable")

    def call_once(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, tuple[str, int]]:
        found = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}/taskInstances")
        return {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in found["task_instances"]}

    def wait_run(self, dag_id: str, run_id: str) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}"
        return wait_for(lambda: (state := self.call("GET", path)["state"]) in ("success", "failed") and state,
                        f"{dag_id} run {run_id}", RUN_S)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    pg_folder = Path(tempfile.mkdtemp(prefix="xgen-pg-"))  # pytest's temp root is private to root; postgres runs as postgres
    database, started = start_postgres(pg_folder / "pg")
    processes: list[subprocess.Popen] = [] if database is None else list(started)
    if database is None:
        print(f"\nAirflow metadata database: SQLite, because PostgreSQL could not start here: {started}")
        database = f"sqlite:///{home}/airflow.db"
    port = _free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
           "AIRFLOW__CORE__PARALLELISM": "2", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
           "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5", "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
           "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",  # a loaded 2-core machine answers slowly
           "PATH": f"{BIN}:{os.environ['PATH']}", "PYSPARK_PYTHON": sys.executable}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
    try:
        for service in SERVICES:
            processes.append(subprocess.Popen([str(BIN / "airflow"), service], env=env, cwd=home,
                                              stdout=(home / f"{service}.log").open("w"), stderr=subprocess.STDOUT,
                                              start_new_session=True))
        base = f"http://127.0.0.1:{port}"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for(lambda: passwords.exists() and urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5),
                 "the API server", 300)
        token_request = urllib.request.Request(
            f"{base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"username": "admin", "password": json.loads(passwords.read_text())["admin"]}).encode())
        with urllib.request.urlopen(token_request, timeout=30) as response:
            client = Airflow(base, json.load(response)["access_token"])
        wait_for(lambda: {"xgen_end_to_end", "xgen_data_refresh"} <= {
            d["dag_id"] for d in client.call("GET", "/api/v2/dags")["dags"]}, "the DAGs parsed", 300)
        for dag_id in ("xgen_end_to_end", "xgen_data_refresh"):
            client.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        yield client, home
    finally:
        for process in reversed(processes):
            if group_alive(process.pid):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(pg_folder, ignore_errors=True)


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
        "dag_runs"] if r["run_type"] == "backfill"]) == 2 and found, "two backfill runs", 120)
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
             "the cleared task to run again", RUN_S)
    after = client.task_states("xgen_data_refresh", second)
    assert {task: tries for task, (_, tries) in after.items() if tries != before[task][1]} == {
        "dedup": before["dedup"][1] + 1}
    logs = list((home / "logs").rglob("*"))
    dedup_logs = [p for p in logs if p.is_file() and "task_id=dedup" in str(p) and second.replace(":", "") in
                  str(p).replace(":", "") and "attempt=" + str(before["dedup"][1] + 1) in p.name]
    assert dedup_logs and "reusing it, nothing to do" in dedup_logs[0].read_text()
