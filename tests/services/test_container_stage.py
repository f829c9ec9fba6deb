"""A stage in the pipeline image: infra/images/pipeline.Dockerfile built with podman on a local Debian base image,
ingest of the sample corpus run there through the `docker` backend (Airflow's DockerOperator talking to `podman
system service`'s Docker API) with the artifacts folder bind-mounted, giving the same rows and manifest as the same
argv through the `local` backend. Skipped, with the reason, where podman cannot be installed or cannot run."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.backends import make_backend
from tests.conftest import SMALL_CORPUS
from tests.services import podman
from tests.services.services import REPO, start_service, stop_services, wait_for
from xgen_core.config import load_config
from xgen_core.stages import get_stage, run_stage

pytestmark = [pytest.mark.service, pytest.mark.spark, pytest.mark.slow]

IMAGE = "localhost/xgen-pipeline:services-test"
# What differs between two runs of the same stage on the same inputs: when it ran and where it wrote.
RUN_SPECIFIC = ("started_at", "finished_at", "uri")


@pytest.fixture(scope="module")
def docker_url(tmp_path_factory):
    """The Docker API of `podman system service` with the pipeline image built (the base image made first where
    the cache has none)."""
    started = time.monotonic()
    why_not = podman.why_podman_cannot_run() or podman.ensure_base_image()
    if why_not:
        pytest.skip(f"podman cannot run containers here: {why_not}")
    base_ready = time.monotonic()
    built = podman.build_pipeline_image(REPO, IMAGE)
    assert built.returncode == 0, f"building the pipeline image failed:\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    print(f"\nbase image ready in {base_ready - started:.0f} s, pipeline image in {time.monotonic() - base_ready:.0f} s"
          f" (cached under {podman.CACHE})")
    folder = tmp_path_factory.mktemp("podman")
    socket = folder / "podman.sock"
    service = start_service(podman.service_argv(socket), folder / "service.log", env=podman.podman_env())
    try:
        url = f"unix://{socket}"
        wait_for(lambda: ping(socket), "podman's Docker API", 60, every_s=0.5)
        yield url
    finally:
        stop_services([service], grace_s=20)


def ping(socket: Path) -> bool:
    import docker

    client = docker.APIClient(base_url=f"unix://{socket}", timeout=10)
    try:
        return client.ping()
    except docker.errors.DockerException:
        return False
    finally:
        client.close()


def ingest_argv(root: Path, corpus_uri: str) -> list[str]:
    """The ingest entrypoint's argv as a DAG renders it; both runs read the same corpus files (doc ids come from
    input URIs), each writes under its own root."""
    return ["data_jobs.ingest", "--profile", "tiny", "--run-id", "container-test", "--root", str(root),
            "--input", f"sample_corpus={corpus_uri}", *SMALL_CORPUS]


def rows(uri: str, folder: str) -> list[dict]:
    found = pq.read_table(urllib.parse.urlparse(uri).path + f"/{folder}", partitioning=None).to_pylist()
    return sorted(found, key=lambda row: json.dumps(row, sort_keys=True, default=str))


def built_uri(lines: list[str]) -> str:
    """The artifact a stage reports as built (`ingest: built URI`, its last line)."""
    built = [line.split("ingest: built ", 1)[1] for line in lines if line.startswith("ingest: built ")]
    assert built, f"no 'ingest: built' line in:\n" + "\n".join(lines[-20:])
    return built[-1].strip()


def test_ingest_in_the_pipeline_image_matches_the_local_run(docker_url, tmp_path):
    shared = tmp_path / "artifacts"  # bind-mounted at the same path: file:// URIs mean the same inside and out
    corpus = run_stage(load_config("tiny", [f"root={shared / 'corpus'}", *SMALL_CORPUS]), "sample_corpus", "r")
    stage = get_stage("ingest")

    local_lines = make_backend("local").run(ingest_argv(shared / "local", corpus.uri), log=lambda line: None)

    cfg = load_config("tiny", [f"orchestration.image={IMAGE}", f"orchestration.docker.url={docker_url}",
                               f"orchestration.docker.artifacts_mount={shared}"])
    container = make_backend("docker", stage=stage, cfg=cfg, task_id="ingest")
    container_lines = container.run(ingest_argv(shared / "container", corpus.uri), log=print)

    local_uri, container_uri = built_uri(local_lines), built_uri(container_lines)
    assert Path(urllib.parse.urlparse(container_uri).path).is_relative_to(shared / "container")
    for folder in ("data", "quarantine"):
        assert rows(container_uri, folder) == rows(local_uri, folder), folder
    assert len(rows(container_uri, "data")) > 0
    local_manifest, container_manifest = (json.loads(Path(urllib.parse.urlparse(uri).path, "manifest.json").read_text())
                                          for uri in (local_uri, container_uri))
    for key in RUN_SPECIFIC:
        local_manifest.pop(key), container_manifest.pop(key)
    assert container_manifest == local_manifest  # version, counts, layout, config, input digests
