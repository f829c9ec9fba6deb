"""Images and the compose file, checked offline (no Docker engine here): every path they copy exists."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_every_copied_path_exists_and_both_images_use_the_lock():
    for dockerfile in (REPO / "infra" / "images").glob("*.Dockerfile"):
        text = dockerfile.read_text()
        assert "uv sync --frozen" in text, dockerfile.name
        for sources in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
            for source in sources.split():
                assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"


def test_compose_runs_the_airflow_services_on_postgres():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "airflow-init", "api-server", "scheduler", "dag-processor", "triggerer"} <= set(services)
    dockerfile = services["scheduler"]["build"]["dockerfile"]
    assert (REPO / dockerfile).exists()
    assert services["scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_compose_adds_spark_and_gcs_with_healthchecks_and_keeps_secrets_out():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"spark-master", "spark-worker", "gcs"} <= set(services)
    for name in ("postgres", "api-server", "scheduler", "dag-processor", "triggerer", "spark-master", "gcs"):
        assert "healthcheck" in services[name], name
    assert services["scheduler"]["environment"]["XGEN_ARTIFACTS"] == "/artifacts"
    text = (REPO / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD: airflow" not in text and "${POSTGRES_PASSWORD:?" in text
    example = dict(line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET", "BASE_IMAGE"} <= set(example)
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_both_images_take_the_base_image_as_a_build_argument():
    for dockerfile in (REPO / "infra" / "images").glob("*.Dockerfile"):
        lines = [line for line in dockerfile.read_text().splitlines() if line and not line.startswith("#")]
        assert lines[0].startswith("ARG BASE_IMAGE=") and lines[1] == "FROM ${BASE_IMAGE}", dockerfile.name


def test_the_dags_default_root_is_xgen_artifacts(monkeypatch):
    from operators.dag_factory import common_params
    from xgen_core.stages import pipeline_order

    monkeypatch.setenv("XGEN_ARTIFACTS", "/artifacts")
    assert common_params(pipeline_order())["root"].value == "/artifacts"
