"""What the services tests share (a plain module; the fixtures built on it are in conftest.py): waiting for a service
to answer, starting services in process groups of their own and ending every process of those groups, Debian packages
installed when missing, a PostgreSQL server on loopback, and a client of Airflow's REST API v2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from operators.backends import group_alive
from tests.conftest import _free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Kept after the run (screenshots of the browser test); CI can collect the folder.
TEST_ARTIFACTS = Path(os.environ.get("XGEN_TEST_ARTIFACTS", REPO / "test-artifacts"))


def wait_for(condition, what: str, timeout_s: float, every_s: float = 1.0):
    """`condition()`'s first truthy value, asked every `every_s` seconds; a connection error counts as not yet."""
    pause = threading.Event()
    waited = 0.0
    while waited < timeout_s:
        try:
            value = condition()
            if value:
                return value
        except OSError:  # urllib's URLError and HTTPError are OSErrors too
            pass
        pause.wait(every_s)
        waited += every_s
    pytest.fail(f"timed out waiting for {what}")


def start_service(argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """A service in a process group of its own, so that stopping it ends its children too."""
    return subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def stop_services(processes: list[subprocess.Popen], grace_s: float = 60) -> None:
    """SIGTERM each service's whole group (the last started first), SIGKILL what is left after `grace_s`."""
    for process in reversed(processes):
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def debian_packages(packages: list[str], binaries: list[str]) -> str | None:
    """Install `packages` with apt-get where one of `binaries` is missing; None when all are there, else why not."""
    missing = [b for b in binaries if shutil.which(b) is None and not Path(b).exists()]
    if not missing:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{', '.join(missing)} missing and apt-get cannot install {' '.join(packages)} here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(command)}` failed: {done.stderr.strip().splitlines()[-1:]}"
    still = [b for b in binaries if shutil.which(b) is None and not Path(b).exists()]
    return f"{', '.join(still)} still missing after installing {' '.join(packages)}" if still else None


def start_postgres(folder: Path) -> tuple[str, list[subprocess.Popen]] | tuple[None, str]:
    """(SQLAlchemy URL, processes) of a fresh PostgreSQL cluster on loopback, or (None, why not)."""
    try:
        import asyncpg  # noqa: F401  (Airflow 3 opens an async engine on the same database)
        import psycopg2  # noqa: F401
    except ImportError as missing:
        return None, f"the PostgreSQL driver {missing.name} is not installed"
    why_not = debian_packages(["postgresql"], [str(PG_BIN / "initdb")])  # Debian bookworm's server is 15
    if why_not:
        return None, f"no PostgreSQL server: {why_not}"
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
    server = start_service([*as_postgres, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port),
                            "-h", "127.0.0.1", "-k", str(folder)], folder / "pg.log")
    wait_for(lambda: subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                    capture_output=True).returncode == 0, "PostgreSQL", 120)
    created = subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                              "airflow", "airflow"], capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        return None, f"createdb failed: {created.stderr.strip()}"
    return f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow", [server]


class AirflowClient:
    """Airflow's REST API v2 with a bearer token from /auth/token, as the UI uses it."""

    RUN_S = 1500  # a DAG run on a loaded 2-core machine

    def __init__(self, base: str, token: str, password: str):
        self.base, self.token, self.password = base, token, password

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
                        f"{dag_id} run {run_id}", self.RUN_S, every_s=2.0)


def token(base: str, username: str, password: str) -> str:
    request = urllib.request.Request(f"{base}/auth/token", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"username": username, "password": password}).encode())
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["access_token"]
