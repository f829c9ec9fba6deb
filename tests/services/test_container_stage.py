"""A stage in the pipeline image: podman (Debian's package, installed with apt-get where missing) builds
infra/images/pipeline.Dockerfile on a Debian bookworm base made here (no registry is reachable), and the docker
backend's own DockerOperator runs ingest in it through `podman system service` (the Docker API), the artifact root
bind-mounted at the same path; the artifact equals the one the local backend makes.

Podman needs, in this sandbox: runtime runc (crun fails on mixed cgroups), explicit ulimits (its defaults need a
capability the sandbox lacks) and host networking. The base image and the image's dependency layer stay in podman's
store, so a second run rebuilds only the project layers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.backends import provider_operator
from operators.specs import render, stage_argv
from tests.conftest import SMALL_CORPUS
from tests.services.services import REPO, debian_packages, start_service, stop_services, wait_for
from xgen_core.config import load_config
from xgen_core.stages import get_stage

pytestmark = [pytest.mark.service, pytest.mark.slow]

BASE_IMAGE = "localhost/xgen-bookworm-python:1"
PIPELINE_IMAGE = "localhost/xgen-pipeline:services-test"
CONTAINERS_CONF = """[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
"""
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # HTTPS to the registries is intercepted here


def debian_mirror() -> str:
    """The Debian mirror apt already uses on this machine."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    for line in sources.read_text().splitlines() if sources.exists() else []:
        if line.startswith("URIs:") and "security" not in line:
            return line.split()[1]
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """A function running `podman ARGS` with this sandbox's containers.conf; skips where podman cannot run."""
    why_not = debian_packages(["podman", "buildah", "debootstrap", "runc", "uidmap"],
                              ["podman", "debootstrap", "runc"])
    if why_not:
        pytest.skip(f"no podman: {why_not}")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def podman_run(*args: str, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs)

    probe = podman_run("info")
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip().splitlines()[-1:]}")
    podman_run.env = env
    return podman_run


def ensure_base_image(podman, work: Path) -> None:
    """Debian bookworm (minbase + Python 3.11, pip, Java for Spark) imported as BASE_IMAGE, once per podman store."""
    if podman("image", "exists", BASE_IMAGE).returncode == 0:
        return
    rootfs = work / "rootfs"
    made = subprocess.run(["debootstrap", "--variant=minbase",
                           "--include=python3,python3-pip,python3-venv,ca-certificates,openjdk-17-jre-headless,procps",
                           "bookworm", str(rootfs), debian_mirror()], capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    archive = work / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    shutil.rmtree(rootfs, ignore_errors=True)
    # The image's system Python is the one the pipeline's venv is made from: pip may install uv into it.
    imported = podman("import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1",
                      "--change", "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                      "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", str(archive), BASE_IMAGE)
    archive.unlink()
    assert imported.returncode == 0, imported.stderr[-3000:]


def uv_cache() -> str:
    found = subprocess.run([str(Path(sys.executable).parent / "uv"), "cache", "dir"], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else str(Path.home() / ".cache" / "uv")


@pytest.fixture(scope="module")
def pipeline_image(podman, tmp_path_factory):
    ensure_base_image(podman, tmp_path_factory.mktemp("base-image"))
    cache = uv_cache()
    Path(cache).mkdir(parents=True, exist_ok=True)
    built = podman("build", "--network=host", "-f", "infra/images/pipeline.Dockerfile",
                   "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--volume", f"{cache}:/root/.cache/uv",  # this host's wheels
                   "-t", PIPELINE_IMAGE, ".", cwd=REPO, timeout=1800)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return PIPELINE_IMAGE


@pytest.fixture(scope="module")
def docker_api(podman, tmp_path_factory):
    """`podman system service` on a unix socket: the Docker API that the docker backend's DockerOperator talks to."""
    folder = tmp_path_factory.mktemp("podman-service")
    socket = folder / "podman.sock"
    service = start_service(["podman", "system", "service", "--time=0", f"unix://{socket}"], folder / "service.log",
                            env=podman.env)
    try:
        wait_for(lambda: socket.exists(), "the podman API socket", 60, every_s=0.5)
        yield f"unix://{socket}"
    finally:
        stop_services([service], grace_s=10)


def run_local(module: str, root: Path, *extra: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--profile", "tiny", "--root", str(root), "--run-id", "c",
                           *extra, *SMALL_CORPUS], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def finished(root: Path, stage: str) -> Path:
    return next(p for p in root.glob(f"{stage}-*") if (p / "_SUCCESS").exists())


def rows(artifact: Path) -> list[dict]:
    table = pq.read_table(artifact / "data")
    return sorted(table.to_pylist(), key=lambda row: json.dumps(row, sort_keys=True, default=str))


def test_ingest_in_the_pipeline_image_equals_the_local_run(pipeline_image, docker_api, tmp_path):
    local_root, container_root = tmp_path / "local", tmp_path / "container"
    for root in (local_root, container_root):
        run_local("data_jobs.sample_corpus", root)
    run_local("data_jobs.ingest", local_root)

    cfg = load_config("tiny", [f"orchestration.image={pipeline_image}", f"orchestration.docker.url={docker_api}",
                               f"orchestration.docker.artifacts_mount={container_root}"])
    argv = stage_argv("data_jobs.ingest", {"profile": "tiny", "root": str(container_root),
                                           "overrides": SMALL_CORPUS}, "c", {})
    spec = render("docker", get_stage("ingest"), argv, cfg)
    lines = provider_operator("docker", spec, "ingest").execute({})
    print("\n".join(line for line in (lines if isinstance(lines, list) else [lines]) if isinstance(line, str)))

    local, contained = finished(local_root, "ingest"), finished(container_root, "ingest")
    assert rows(contained) == rows(local)
    assert json.loads((contained / "manifest.json").read_text())["counts"] == \
        json.loads((local / "manifest.json").read_text())["counts"]
