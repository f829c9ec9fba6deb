"""The operators run a stage on the backend the config names for its group; a killed local stage leaves no child."""

from __future__ import annotations

import os
import sys
import threading
import typing

import pytest

from operators.backends import BACKENDS, LocalBackend, ProviderBackend, StageFailed, backend_for, group_alive, make_backend
from xgen_core.config import OrchestrationConfig
from xgen_core.stages import get_stage


def test_the_backends_the_config_accepts_are_the_ones_that_exist():
    assert typing.get_args(OrchestrationConfig.model_fields["backend"].annotation) == BACKENDS
    with pytest.raises(ValueError, match="unknown backend 'mars'; available: local, docker, kubernetes"):
        make_backend("mars")


def test_each_stage_group_gets_the_backend_orchestration_backends_names():
    overrides = ['orchestration.backends={"data": "spark-submit", "train": "kubernetes"}']
    dedup = backend_for("tiny", overrides, get_stage("dedup"))
    assert isinstance(dedup, ProviderBackend) and dedup.name == "spark-submit"
    assert backend_for("tiny", overrides, get_stage("pretrain")).name == "kubernetes"
    assert isinstance(backend_for("tiny", overrides, get_stage("report")), LocalBackend)  # group pipeline: default
    with pytest.raises(ValueError, match="runs Spark stages only; tokenizer is a python stage"):
        backend_for("tiny", ['orchestration.backends={"train": "dataproc"}'], get_stage("tokenizer"))


def test_the_local_backend_runs_the_interpreter_orchestration_python_names(tmp_path):
    interpreter = tmp_path / "python"
    interpreter.write_text('#!/bin/sh\necho "ran with: $*"\n')
    interpreter.chmod(0o755)
    backend = backend_for("tiny", [f"orchestration.python={interpreter}"])
    assert backend == LocalBackend(python=str(interpreter))
    assert backend.run(["data_jobs.ingest", "--profile", "tiny"], log=lambda line: None) == [
        "ran with: -m data_jobs.ingest --profile tiny"
    ]


def test_a_failing_stage_command_reports_its_error_line(tmp_path):
    interpreter = tmp_path / "python"
    interpreter.write_text('#!/bin/sh\necho "error: ingest: no input files found"\nexit 2\n')
    interpreter.chmod(0o755)
    with pytest.raises(StageFailed, match="^error: ingest: no input files found$"):
        backend_for("tiny", [f"orchestration.python={interpreter}"]).run(["data_jobs.ingest"], log=lambda line: None)


def test_killing_a_stage_ends_its_whole_process_group(tmp_path):
    """A stage that started a child which started a grandchild (like a driver and its JVM): kill() ends all three."""
    module = tmp_path / "fake_stage.py"
    module.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import subprocess, time; "
        "subprocess.Popen([\"sleep\", \"300\"]); time.sleep(300)'])\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n"
    )
    interpreter = tmp_path / "python"
    interpreter.write_text(f'#!/bin/sh\ncd {tmp_path}\nexec {sys.executable} "$@"\n')
    interpreter.chmod(0o755)
    backend = LocalBackend(python=str(interpreter))
    started = threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            backend.run(["fake_stage"], log=lambda line: started.set() if line == "started" else None)
        except BaseException as error:  # the killed stage exits non-zero
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(120)
    pgid = backend._process.pid
    assert os.getpgid(pgid) == pgid != os.getpgid(0)  # its own process group, not the worker's
    assert group_alive(pgid)
    backend.kill()
    thread.join(60)
    assert not thread.is_alive()
    assert not group_alive(pgid)  # no child or grandchild left running
    assert errors and isinstance(errors[0], StageFailed)
