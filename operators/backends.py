"""Where a stage's entrypoint runs. One backend exists: `local`, a subprocess on the Airflow worker (with
`orchestration.python` as its interpreter, empty = the worker's own).

A backend is a class with run(argv, log) -> output lines, registered in BACKENDS under the name that
`orchestration.backend` accepts; it receives the stage entrypoint and its flags (the same argv for any backend).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Protocol


class StageFailed(RuntimeError):
    """The stage command exited non-zero; the message is its last error line."""


class Backend(Protocol):
    def run(self, argv: list[str], log: Callable[[str], None]) -> list[str]: ...


@dataclass
class LocalBackend:
    python: str = ""

    def run(self, argv: list[str], log: Callable[[str], None]) -> list[str]:
        command = [self.python or sys.executable, "-m", *argv]
        log("running: " + " ".join(command))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log(line)
        if process.wait() != 0:
            errors = [line for line in lines if line.startswith("error:")]
            raise StageFailed(errors[-1] if errors else f"exit code {process.returncode}: {lines[-1:] or ''}")
        return lines


BACKENDS: dict[str, Callable[..., Backend]] = {"local": LocalBackend}


def make_backend(name: str, **options) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[name](**options)


def backend_for(profile: str, overrides: list[str]) -> Backend:
    """The backend the run's config names (`orchestration`, after the DAG run's overrides), with its options."""
    from xgen_core.config import load_config

    orchestration = load_config(profile, overrides).orchestration
    return make_backend(orchestration.backend, python=orchestration.python)
