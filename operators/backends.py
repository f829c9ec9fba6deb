"""Where a stage's entrypoint runs. Every backend runs the same argv (`<entrypoint module> --profile ... key=value`):

- `local`: a subprocess on the Airflow worker, in its own process group (`orchestration.python`, empty = the worker's
  own interpreter);
- `docker`: the pipeline image through Airflow's DockerOperator (any Docker-API engine, podman's included);
- `kubernetes`: one pod (KubernetesPodOperator) for single-host stages; a multi-host TPU slice as a JobSet or an
  indexed Job (`KubernetesJobOperator`, completions = parallelism = hosts) with GKE TPU node selectors;
- `dataproc`: a Spark stage as a Dataproc Serverless batch with the pipeline image as custom container;
- `spark-submit`: a Spark stage through SparkSubmitOperator to a standalone or YARN master.

The job specs are plain dicts built in operators/specs.py (what `python -m operators.render` prints); this module
turns them into the provider operators, imported only when a task runs on that backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from operators import specs
from xgen_core.stages import Stage

KILL_GRACE_S = 20.0  # SIGTERM lets the stage release its lease and delete its staging copy; then SIGKILL


class StageFailed(RuntimeError):
    """The stage command exited non-zero; the message is its last error line."""


class Backend(Protocol):
    def run(self, argv: list[str], log: Callable[[str], None], context: Any = None) -> list[str]: ...

    def kill(self) -> None: ...


@dataclass
class LocalBackend:
    python: str = ""
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False, compare=False)

    def command(self, argv: list[str]) -> list[str]:
        return [self.python or sys.executable, "-m", *argv]

    def run(self, argv: list[str], log: Callable[[str], None], context: Any = None) -> list[str]:
        command = self.command(argv)
        log("running: " + " ".join(command))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Its own session = its own process group: on_kill and a timeout end the stage's Spark JVM and workers too.
        self._process = process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True, env=env, start_new_session=True)
        lines = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                log(line)
            process.wait()
        finally:
            if process.poll() is None:  # interrupted (execution_timeout, task killed): leave no child behind
                self.kill()
        if process.returncode != 0:
            errors = [line for line in lines if line.startswith("error:")]
            raise StageFailed(errors[-1] if errors else f"exit code {process.returncode}: {lines[-1:] or ''}")
        return lines

    def kill(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left after KILL_GRACE_S."""
        process = self._process
        if process is None:
            return
        terminate_group(process.pid, KILL_GRACE_S)
        process.poll()


def terminate_group(pgid: int, grace_s: float) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    done = threading.Event()
    waited = 0.0
    while waited < grace_s and not done.is_set():
        if not group_alive(pgid):
            return
        done.wait(0.1)
        waited += 0.1
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Any process of the group still running (zombies count as gone)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@dataclass
class ProviderBackend:
    """A backend that runs the stage through an Airflow provider operator built from the rendered spec."""

    name: str
    stage: Stage
    cfg: Any
    task_id: str
    _operator: Any = field(default=None, init=False, repr=False, compare=False)

    def run(self, argv: list[str], log: Callable[[str], None], context: Any = None) -> list[str]:
        spec = specs.render(self.name, self.stage, argv, self.cfg)
        log(f"{self.name} spec: {specs.summary(spec)}")
        self._operator = provider_operator(self.name, spec, self.task_id)
        result = self._operator.execute(context)
        return [line for line in (result if isinstance(result, list) else [result]) if isinstance(line, str)]

    def kill(self) -> None:
        if self._operator is not None:
            self._operator.on_kill()


def provider_operator(backend: str, spec: dict, task_id: str):
    """The provider operator that submits `spec` and waits for it (provider packages: the orchestrator extra)."""
    if backend == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import Mount

        container = spec["container"]
        mounts = [Mount(target=m["target"], source=m["source"], type="bind") for m in container["mounts"]]
        return DockerOperator(task_id=task_id, image=container["image"], command=container["command"],
                              entrypoint=container["entrypoint"], environment=container["environment"],
                              mounts=mounts, network_mode=container["network_mode"], docker_url=spec["docker_url"],
                              auto_remove="success", mount_tmp_dir=False, xcom_all=True)
    if backend == "kubernetes":
        manifest = spec["manifest"]
        if manifest["kind"] == "Pod":
            from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

            return KubernetesPodOperator(task_id=task_id, namespace=manifest["metadata"]["namespace"],
                                         pod_template_dict=manifest, get_logs=True, on_finish_action="delete_pod")
        if manifest["kind"] == "Job":
            from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator

            job = manifest["spec"]
            return KubernetesJobOperator(
                task_id=task_id, namespace=manifest["metadata"]["namespace"], full_job_spec=manifest,
                completion_mode=job["completionMode"], completions=job["completions"],
                parallelism=job["parallelism"], wait_until_job_complete=True, get_logs=True,
            )
        from operators.jobset import JobSetOperator

        return JobSetOperator(task_id=task_id, manifest=manifest)
    if backend == "dataproc":
        from airflow.providers.google.cloud.operators.dataproc import DataprocCreateBatchOperator

        return DataprocCreateBatchOperator(task_id=task_id, project_id=spec["project_id"], region=spec["region"],
                                           batch_id=spec["batch_id"], batch=spec["batch"])
    if backend == "spark-submit":
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        return SparkSubmitOperator(task_id=task_id, **spec["operator"])
    raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")


BACKENDS = ("local", "docker", "kubernetes", "dataproc", "spark-submit")


def make_backend(name: str, **options) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    if name == "local":
        return LocalBackend(python=options.get("python", ""))
    return ProviderBackend(name, options["stage"], options["cfg"], options.get("task_id") or options["stage"].name)


def backend_for(profile: str, overrides: list[str], stage: Stage | None = None) -> Backend:
    """The backend the run's config names for the stage's group (`orchestration.backends`, else `.backend`)."""
    from xgen_core.config import load_config

    cfg = load_config(profile, overrides)
    orchestration = cfg.orchestration
    name = orchestration.backend_of(stage.group) if stage is not None else orchestration.backend
    if name != "local":
        specs.check_backend_fits(name, stage)
    return make_backend(name, python=orchestration.python, stage=stage, cfg=cfg)
