"""The job spec each backend submits for a stage, as plain data (no Airflow, no provider imports).

`python -m operators.render` prints these; operators/backends.py hands them to the provider operators; tests check
them. Resources come from the stage table (`Stage.resources`: cpu | spark | tpu) and `orchestration.*` in config.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
from pathlib import Path

from xgen_core.config import XgenConfig
from xgen_core.stages import Stage

IMAGE_WORKDIR = "/app"  # infra/images/pipeline.Dockerfile: the project lives here
IMAGE_PYTHON = "/opt/venv/bin/python"
SPARK_BACKENDS = ("dataproc", "spark-submit")
TPU_PORTS = (8471, 8080)  # libtpu's inter-host port and its metrics port (GKE's TPU examples open both)


def stage_argv(module: str, params: dict, run_id: str, param_overrides: dict[str, str],
               extra: list[str] | None = None, inputs: list[str] | None = None) -> list[str]:
    """The entrypoint's argv for a DAG run: profile, run id, root, `--input`s, then config overrides (the DAG's
    param overrides, what the DAG computes, e.g. the refresh snapshot, and the run's own `overrides` last)."""
    argv = [module, "--profile", params.get("profile") or "tiny", "--run-id", run_id]
    if params.get("root"):
        argv += ["--root", params["root"]]
    for uri in inputs or []:
        argv += ["--input", uri]
    for param, key in param_overrides.items():
        value = params.get(param)
        if value not in (None, "", []):
            argv.append(f"{key}={json.dumps(value)}")
    argv += list(extra or [])
    argv += list(params.get("overrides") or [])
    return argv


def check_backend_fits(backend: str, stage: Stage | None) -> None:
    if backend in SPARK_BACKENDS and (stage is None or stage.backend != "spark"):
        name = stage.name if stage else "a stage"
        raise ValueError(f"backend {backend} runs Spark stages only; {name} is a "
                         f"{stage.backend if stage else '?'} stage: give its group another backend")


def render(backend: str, stage: Stage, argv: list[str], cfg: XgenConfig) -> dict:
    check_backend_fits(backend, stage)
    if backend == "local":
        return {"backend": "local", "command": [cfg.orchestration.python or "python", "-m", *argv],
                "process_group": "own session (start_new_session); on_kill ends the whole group"}
    if backend == "docker":
        return docker_spec(stage, argv, cfg)
    if backend == "kubernetes":
        return kubernetes_spec(stage, argv, cfg)
    if backend == "dataproc":
        return dataproc_spec(stage, argv, cfg)
    if backend == "spark-submit":
        return spark_submit_spec(stage, argv, cfg)
    raise ValueError(f"unknown backend {backend!r}")


def summary(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)[:400]


def job_name(stage: Stage, argv: list[str]) -> str:
    """A DNS-1123 name, unique per stage and argv (run id and overrides are in argv): xgen-<stage>-<hash>."""
    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:10]
    return f"xgen-{stage.name.replace('_', '-')}-{digest}"


# --- docker -------------------------------------------------------------------------------------------------------

def docker_spec(stage: Stage, argv: list[str], cfg: XgenConfig) -> dict:
    docker = cfg.orchestration.docker
    mounts = [{"source": docker.artifacts_mount, "target": docker.artifacts_mount, "type": "bind"}] \
        if docker.artifacts_mount else []
    return {
        "backend": "docker",
        "docker_url": docker.url,
        "container": {
            "name": job_name(stage, argv),
            "image": cfg.orchestration.image,
            "entrypoint": [IMAGE_PYTHON, "-m"],
            "command": list(argv),
            "environment": {"PYTHONUNBUFFERED": "1", **local_spark_env(stage, cfg)},
            "mounts": mounts,
            "network_mode": docker.network_mode,
        },
    }


def local_spark_env(stage: Stage, cfg: XgenConfig) -> dict:
    """A Spark stage on a local master keeps its driver on the container's loopback; other masters must reach it."""
    return {"SPARK_LOCAL_IP": "127.0.0.1"} if stage.backend == "spark" and cfg.spark.master.startswith("local") else {}


def spark_conf(cfg: XgenConfig) -> dict[str, str]:
    """cfg.spark.conf as spark-submit / Dataproc properties (booleans as Spark writes them, as get_spark does)."""
    return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in cfg.spark.conf.items()}


# --- kubernetes ---------------------------------------------------------------------------------------------------

def kubernetes_spec(stage: Stage, argv: list[str], cfg: XgenConfig) -> dict:
    k8s = cfg.orchestration.kubernetes
    name = job_name(stage, argv)
    if stage.resources == "tpu" and k8s.tpu_for(stage.name).hosts > 1:
        launcher = jobset if k8s.tpu.multi_host == "jobset" else indexed_job
        manifest = launcher(stage, argv, cfg, name)
    else:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels(stage)},
            "spec": pod_spec(stage, argv, cfg, env=[]),
        }
    spec = {"backend": "kubernetes", "manifest": manifest}
    if manifest["kind"] == "Job":
        spec["service"] = headless_service(name, k8s.namespace)  # the pods' DNS names (apply it with the Job)
    return spec


def labels(stage: Stage) -> dict:
    return {"app.kubernetes.io/name": "xgen-pipeline", "xgen/stage": stage.name}


def pod_spec(stage: Stage, argv: list[str], cfg: XgenConfig, env: list[dict], subdomain: str = "") -> dict:
    k8s = cfg.orchestration.kubernetes
    container = {
        "name": "stage",
        "image": cfg.orchestration.image,
        "command": [IMAGE_PYTHON, "-m"],
        "args": list(argv),
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *env],
        "resources": container_resources(stage, cfg),
    }
    spec: dict = {"restartPolicy": "Never", "serviceAccountName": k8s.service_account, "containers": [container]}
    if stage.resources == "tpu":
        tpu = k8s.tpu_for(stage.name)
        spec["nodeSelector"] = {"cloud.google.com/gke-tpu-accelerator": tpu.accelerator,
                                "cloud.google.com/gke-tpu-topology": tpu.topology}
        container["ports"] = [{"containerPort": port} for port in (*TPU_PORTS, k8s.coordinator_port)]
    if subdomain:
        spec["subdomain"] = subdomain
    return spec


def container_resources(stage: Stage, cfg: XgenConfig) -> dict:
    k8s = cfg.orchestration.kubernetes
    if stage.resources == "tpu":
        chips = str(k8s.tpu.chips_per_host)
        return {"requests": {"google.com/tpu": chips}, "limits": {"google.com/tpu": chips}}
    pod = k8s.spark if stage.resources == "spark" else k8s.cpu
    return {"requests": {"cpu": pod.cpu, "memory": pod.memory}, "limits": {"cpu": pod.cpu, "memory": pod.memory}}


def tpu_env(cfg: XgenConfig, hostnames: list[str]) -> list[dict]:
    """What jax.distributed.initialize() reads on GKE (jax/_src/clusters/cloud_tpu_cluster.py: GkeTpuCluster):
    the slice's worker hostnames, this host's index (the Job completion index) and the coordinator port."""
    return [
        {"name": "TPU_WORKER_HOSTNAMES", "value": ",".join(hostnames)},
        {"name": "TPU_WORKER_ID", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "JAX_COORDINATOR_PORT", "value": str(cfg.orchestration.kubernetes.coordinator_port)},
        {"name": "JAX_COORDINATOR_ADDRESS",
         "value": f"{hostnames[0]}:{cfg.orchestration.kubernetes.coordinator_port}"},
        {"name": "JAX_NUM_PROCESSES", "value": str(len(hostnames))},
    ]


def jobset(stage: Stage, argv: list[str], cfg: XgenConfig, name: str) -> dict:
    """One replicated Job of `hosts` indexed pods; JobSet's headless service names pod i `<name>-slice-0-i.<name>`."""
    k8s = cfg.orchestration.kubernetes
    hosts = k8s.tpu_for(stage.name).hosts
    hostnames = [f"{name}-slice-0-{i}.{name}" for i in range(hosts)]
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels(stage),
                     "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
        "spec": {
            "failurePolicy": {"maxRestarts": 0},
            "network": {"enableDNSHostnames": True},
            "replicatedJobs": [{
                "name": "slice",
                "replicas": 1,
                "template": {"spec": {
                    "parallelism": hosts, "completions": hosts, "completionMode": "Indexed", "backoffLimit": 0,
                    "template": {"metadata": {"labels": labels(stage)},
                                 "spec": pod_spec(stage, argv, cfg, tpu_env(cfg, hostnames))},
                }},
            }],
        },
    }


def indexed_job(stage: Stage, argv: list[str], cfg: XgenConfig, name: str) -> dict:
    """An indexed Job; its pods find each other through a headless Service named like the Job (subdomain), which
    the manifest lists next to it (KubernetesJobOperator submits the Job; deploy the Service with it)."""
    k8s = cfg.orchestration.kubernetes
    hosts = k8s.tpu_for(stage.name).hosts
    hostnames = [f"{name}-{i}.{name}" for i in range(hosts)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": k8s.namespace, "labels": labels(stage)},
        "spec": {
            "parallelism": hosts, "completions": hosts, "completionMode": "Indexed", "backoffLimit": 0,
            "template": {"metadata": {"labels": {**labels(stage), "job-name": name}},
                         "spec": pod_spec(stage, argv, cfg, tpu_env(cfg, hostnames), subdomain=name)},
        },
    }


def headless_service(name: str, namespace: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": "None", "selector": {"job-name": name}}}


# --- dataproc / spark-submit --------------------------------------------------------------------------------------

def entrypoint_file(stage: Stage) -> str:
    """The stage's entrypoint as a file (spark-submit takes a file, not `-m module`)."""
    found = importlib.util.find_spec(stage.entrypoint_module)
    assert found is not None and found.origin, stage.entrypoint_module
    return found.origin


def image_entrypoint_file(stage: Stage) -> str:
    return f"{IMAGE_WORKDIR}/{stage.entrypoint_module.replace('.', '/')}.py"


def dataproc_spec(stage: Stage, argv: list[str], cfg: XgenConfig) -> dict:
    dataproc = cfg.orchestration.dataproc
    execution = {key: value for key, value in (("service_account", dataproc.service_account),
                                               ("subnetwork_uri", dataproc.subnetwork)) if value}
    properties = {"spark.pyspark.python": IMAGE_PYTHON, "spark.pyspark.driver.python": IMAGE_PYTHON,
                  **spark_conf(cfg)}
    return {
        "backend": "dataproc",
        "project_id": dataproc.project,
        "region": dataproc.region,
        "batch_id": job_name(stage, argv),  # the same argv resubmitted finds its batch instead of a second one
        "batch": {
            "pyspark_batch": {"main_python_file_uri": f"file://{image_entrypoint_file(stage)}", "args": argv[1:]},
            "runtime_config": {"version": dataproc.runtime_version, "container_image": cfg.orchestration.image,
                               "properties": properties},
            "environment_config": {"execution_config": execution},
            "labels": {"xgen-stage": stage.name.replace("_", "-")},
        },
    }


def spark_submit_spec(stage: Stage, argv: list[str], cfg: XgenConfig) -> dict:
    submit = cfg.orchestration.spark_submit
    application = entrypoint_file(stage)
    conf = {**spark_conf(cfg), "spark.driver.memory": cfg.spark.driver_memory}
    operator = {
        "application": application,
        "application_args": argv[1:],
        "conn_id": submit.conn_id,
        "name": job_name(stage, argv),
        "deploy_mode": submit.deploy_mode,
        "executor_memory": submit.executor_memory,
        "conf": conf,
    }
    if submit.total_executor_cores:
        operator["total_executor_cores"] = submit.total_executor_cores
    line = ["spark-submit", "--master", submit.master, "--deploy-mode", submit.deploy_mode, "--name", operator["name"]]
    for key, value in conf.items():
        line += ["--conf", f"{key}={value}"]
    line += ["--executor-memory", submit.executor_memory]
    if submit.total_executor_cores:
        line += ["--total-executor-cores", str(submit.total_executor_cores)]
    line += [application, *argv[1:]]
    return {"backend": "spark-submit", "master": submit.master, "operator": operator, "command": line,
            "command_line": shlex.join(line)}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def valid_k8s_name(name: str) -> bool:
    return len(name) <= 63 and bool(_NAME.match(name))
