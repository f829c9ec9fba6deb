"""The operators run a stage on the backend the config names, with the config's options; only real backends exist."""

from __future__ import annotations

import typing

import pytest

from operators.backends import BACKENDS, LocalBackend, StageFailed, backend_for, make_backend
from xgen_core.config import OrchestrationConfig


def test_the_backends_the_config_accepts_are_the_ones_that_exist():
    assert typing.get_args(OrchestrationConfig.model_fields["backend"].annotation) == tuple(BACKENDS)
    with pytest.raises(ValueError, match="unknown backend 'kubernetes'; available: local"):
        make_backend("kubernetes")


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
