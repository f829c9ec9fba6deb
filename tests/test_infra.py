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
