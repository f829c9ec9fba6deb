"""Shared fixtures: small configs rooted in a temp dir, a GCS emulator on 127.0.0.1, a Spark session."""

from __future__ import annotations

import os
import socket
import sys
import uuid

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

SMALL_CORPUS = [
    "sample_corpus.code_docs=12",
    "sample_corpus.prose_docs=12",
    "sample_corpus.math_docs=12",
    "sample_corpus.web_docs=10",
]


@pytest.fixture
def small_config(tmp_path):
    """load_config('tiny') with root in a temp dir and a sample corpus small enough to build in a second."""
    from xgen_core.config import load_config

    def make(*overrides: str, root: str | None = None):
        return load_config("tiny", [f"root={root or tmp_path / 'artifacts'}", *SMALL_CORPUS, *overrides])

    return make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """A gcp-storage-emulator server on loopback, with bucket `xgen-test`; yields its gs:// base URI."""
    from gcp_storage_emulator.server import create_server

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="xgen-test")
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        yield "gs://xgen-test"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def spark():
    from xgen_core.config import load_config
    from xgen_core.data.spark import get_spark

    session = get_spark(load_config("tiny").spark)
    yield session
    session.stop()


def _root_on(backend: str, request, tmp_path):
    """A fresh root URI on one storage backend; gs:// roots route through the emulator or the GCS double."""
    from tests.fake_gcs import FakeClient
    from xgen_core.storage import use_gcs_client

    if backend == "local":
        yield str(tmp_path / "artifacts")
    elif backend == "gcs-emulator":
        yield f"{request.getfixturevalue('gcs_emulator')}/{uuid.uuid4().hex}"
    else:
        use_gcs_client(FakeClient())
        try:
            yield f"gs://fake-bucket/{uuid.uuid4().hex}"
        finally:
            use_gcs_client(None)


@pytest.fixture(params=["local", "gcs-emulator", "gcs-fake"])
def root(request, tmp_path):
    yield from _root_on(request.param, request, tmp_path)


@pytest.fixture(params=["local", "gcs-fake"])
def cas_root(request, tmp_path):
    """Backends whose write-once and compare-and-swap can be proven (the emulator ignores preconditions)."""
    yield from _root_on(request.param, request, tmp_path)
