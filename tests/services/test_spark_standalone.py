"""dedup submitted to a Spark standalone cluster (a master and two workers from the pyspark distribution, on
127.0.0.1) through the spark-submit backend's own rendered command gives the same output as local[2]; a worker
killed while the job runs does not change that."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.backends import group_alive
from operators.specs import render, stage_argv
from tests.conftest import SMALL_CORPUS, _free_port
from tests.services.services import wait_for
from xgen_core.config import load_config
from xgen_core.stages import get_stage

pytestmark = [pytest.mark.service, pytest.mark.spark, pytest.mark.slow]

SPARK_HOME = Path(__import__("pyspark").__file__).parent
READY_S = 240  # how long a JVM may take to come up on a loaded 2-core machine


def spark_env() -> dict:
    return {**os.environ, "SPARK_HOME": str(SPARK_HOME), "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_NO_DAEMONIZE": "1"}


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=spark_env(), start_new_session=True)


def master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Master + 2 workers (1 core, 1 GiB each) on loopback; every process group ended afterwards."""
    logs = tmp_path_factory.mktemp("spark-logs")
    port, ui = _free_port(), _free_port()
    master = start(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                    "--webui-port", str(ui)], logs / "master.log")
    url = f"spark://127.0.0.1:{port}"
    workers = [start(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1", "--memory",
                      "1g", "--webui-port", str(_free_port()), "--work-dir", str(logs / f"work{i}"), url],
                     logs / f"worker{i}.log") for i in range(2)]
    try:
        wait_for(lambda: sum(w["state"] == "ALIVE" for w in master_state(ui)["workers"]) == 2, "two alive workers",
                 READY_S)
        yield {"url": url, "ui": ui, "workers": workers, "logs": logs}
    finally:
        for process in [*workers, master]:
            if group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An ingest artifact of the small sample corpus, built with the CLI (local Spark)."""
    root = tmp_path_factory.mktemp("artifacts")
    for module in ("data_jobs.sample_corpus", "data_jobs.ingest"):
        subprocess.run([sys.executable, "-m", module, "--profile", "tiny", "--root", str(root), "--run-id", "prep",
                        *SMALL_CORPUS], check=True, capture_output=True, timeout=600, env=spark_env())
    ingest = next(p for p in root.glob("ingest-*") if (p / "_SUCCESS").exists())
    return root, ingest


def dedup_argv(root: Path, ingest: Path, output: Path) -> list[str]:
    params = {"profile": "tiny", "root": str(root), "overrides": SMALL_CORPUS}
    return stage_argv("data_jobs.dedup", params, "standalone", {}, inputs=[f"ingest={ingest}"]) + ["--output", str(output)]


def rows(folder: Path) -> list[dict]:
    table = pq.read_table(folder / "data")
    return sorted(table.to_pylist(), key=lambda row: json.dumps(row, sort_keys=True, default=str))


def test_dedup_on_the_standalone_cluster_equals_local_and_survives_a_worker_kill(cluster, ingested, tmp_path):
    root, ingest = ingested
    local = tmp_path / "local"
    subprocess.run([sys.executable, "-m", *dedup_argv(root, ingest, local)], check=True, capture_output=True,
                   timeout=600, env=spark_env())

    cfg = load_config("tiny", [f"orchestration.spark_submit.master={cluster['url']}",
                                "orchestration.spark_submit.executor_memory=512m"])  # workers offer 1 GiB each
    on_cluster = tmp_path / "cluster"
    spec = render("spark-submit", get_stage("dedup"), dedup_argv(root, ingest, on_cluster), cfg)
    command = [str(SPARK_HOME / "bin" / "spark-submit"), *spec["command"][1:]]
    submitted = subprocess.Popen(command, stdout=(tmp_path / "submit.log").open("w"), stderr=subprocess.STDOUT,
                                 env=spark_env(), start_new_session=True)
    try:
        # once the application holds executors on both workers, kill one worker (and its executor) outright
        wait_for(lambda: submitted.poll() is None and any(
            app["state"] == "RUNNING" and app["cores"] >= 2 for app in master_state(cluster["ui"])["activeapps"]),
            "the application running on both workers", READY_S)
        victim = cluster["workers"][0]
        os.killpg(victim.pid, signal.SIGKILL)
        assert submitted.wait(600) == 0, (tmp_path / "submit.log").read_text()[-3000:]
    finally:
        if submitted.poll() is None:
            os.killpg(submitted.pid, signal.SIGKILL)
    finished = master_state(cluster["ui"])
    assert sum(w["state"] == "ALIVE" for w in finished["workers"]) == 1  # the job finished on the survivor
    assert len(finished["completedapps"]) == 1  # the stage's own session (named by spark.app_name) ran there
    assert rows(on_cluster) == rows(local)
    assert json.loads((on_cluster / "manifest.json").read_text())["counts"] == \
        json.loads((local / "manifest.json").read_text())["counts"]
