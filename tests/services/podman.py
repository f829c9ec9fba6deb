"""Podman as the container engine of the services tests (a plain module; the fixture is in test_container_stage.py).

No registry is reachable here, so the base image is made locally: a Debian bookworm root from `debootstrap
--variant=minbase` with python3 and pip, imported with `podman import`. Podman runs with runc and explicit ulimits
(crun fails on this host's mixed cgroups; podman's default ulimits need a capability the sandbox lacks) from a
containers.conf of its own, and its images live under the user's cache dir, so a second run reuses the base image
and the pipeline image's dependency layer instead of building them again. Builds read wheels through the host's uv
cache (mounted), and pip / uv in a build trust the host's CA bundle (HTTPS may be intercepted). Containers run with
`--network=host` (the default bridge would change the host's forwarding and iptables)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from tests.services.services import debian_packages

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xgen-pipeline" / "podman"
# Run state is reset at reboot, as /run is; kept apart from the system podman's.
RUN_STATE = Path(tempfile.gettempdir()) / f"xgen-pipeline-podman-{os.getuid()}"
BASE_IMAGE = "localhost/xgen-debian-python:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_PACKAGES = "python3,python3-pip,ca-certificates"  # the pipeline Dockerfile expects python3 with pip
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""


def podman_argv() -> list[str]:
    return ["podman", "--root", str(CACHE / "storage"), "--runroot", str(RUN_STATE / "run"),
            "--tmpdir", str(RUN_STATE / "libpod"), "--storage-driver", "overlay"]


def podman_env() -> dict:
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, timeout_s: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*podman_argv(), *args], env=podman_env(), capture_output=True, text=True,
                          timeout=timeout_s, **kwargs)


def why_podman_cannot_run() -> str | None:
    """None where podman, runc and debootstrap are installed (apt-get installs them where missing) and a container
    runs; else why not."""
    why_not = debian_packages(["podman", "runc", "debootstrap"], ["podman", "runc", "debootstrap"])
    if why_not:
        return why_not
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}")
    if info.returncode != 0:
        return f"`podman info` failed: {info.stderr.strip().splitlines()[-1:]}"
    return None


def debian_mirror() -> str:
    """The Debian mirror apt uses here (deb822 or one-line sources), else deb.debian.org."""
    sources = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for path in sources:
        text = path.read_text() if path.exists() else ""
        found = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, flags=re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, flags=re.M)
        if found:
            return found.group(1)
    return "http://deb.debian.org/debian"


def ensure_base_image() -> str | None:
    """BASE_IMAGE, made once (debootstrap + podman import, ~1 min); None when it exists, else why it cannot be made.
    pip may install into Debian's python there (PIP_BREAK_SYSTEM_PACKAGES), as in python:3.11-slim-bookworm."""
    if podman("image", "exists", BASE_IMAGE).returncode == 0:
        return None
    with tempfile.TemporaryDirectory(prefix="xgen-rootfs-") as folder:
        rootfs = Path(folder) / "rootfs"
        made = subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm",
                               str(rootfs), debian_mirror()], capture_output=True, text=True, timeout=900)
        if made.returncode != 0:
            return f"debootstrap failed: {(made.stderr or made.stdout).strip().splitlines()[-1:]}"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*podman_argv(), "import", "--change", "ENV PIP_BREAK_SYSTEM_PACKAGES=1",
                                   "--change", "CMD [\"python3\"]", "-", BASE_IMAGE], stdin=tar.stdout,
                                  env=podman_env(), capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            return f"`podman import` failed: {imported.stderr.strip().splitlines()[-1:]}"
    return None


def build_pipeline_image(repo: Path, tag: str) -> subprocess.CompletedProcess:
    """infra/images/pipeline.Dockerfile on BASE_IMAGE; its layers are cached, so a second build only redoes the
    layers after a changed file."""
    uv_cache = Path(os.environ.get("UV_CACHE_DIR") or CACHE.parent.parent / "uv")
    uv_cache.mkdir(parents=True, exist_ok=True)
    volumes = ["-v", f"{uv_cache}:/root/.cache/uv"]
    certs = []
    if HOST_CA.exists():
        volumes += ["-v", f"{HOST_CA}:/run/host-ca.crt:ro"]
        certs = ["--build-arg", "SSL_CERT_FILE=/run/host-ca.crt", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
    return podman("build", "--network=host", "--layers", "-f", str(repo / "infra/images/pipeline.Dockerfile"),
                  "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *certs, *volumes, "-t", tag, str(repo),
                  timeout_s=1500)


def service_argv(socket: Path) -> list[str]:
    """`podman system service`: the Docker API on a unix socket, for docker-py and Airflow's DockerOperator."""
    return [*podman_argv(), "system", "service", "--time=0", f"unix://{socket}"]

