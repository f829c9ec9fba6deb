"""Each backend's rendered job spec, and the provider operators built from it (no cluster needed to build them)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from operators import specs
from operators.specs import render, stage_argv
from xgen_core.config import load_config
from xgen_core.errors import XgenError
from xgen_core.stages import get_stage

RUN = "manual__2026-01-05T03:00:00+00:00"


def argv_for(stage: str, profile: str) -> list[str]:
    return stage_argv(get_stage(stage).entrypoint_module, {"profile": profile}, RUN, {})


def spec_for(backend: str, stage: str, profile: str, overrides: tuple[str, ...] = ()) -> dict:
    return render(backend, get_stage(stage), argv_for(stage, profile), load_config(profile, list(overrides)))


def test_pretrain_on_a_v5p_slice_is_a_jobset_of_one_pod_per_host_with_tpu_selectors_and_jax_env():
    manifest = spec_for("kubernetes", "pretrain", "xgen-small-4b")["manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
    name = manifest["metadata"]["name"]
    assert specs.valid_k8s_name(name)
    job = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]
    # v5p 8x8x16 = 1,024 chips, 4 per host: 256 hosts, one indexed pod each
    assert job["parallelism"] == job["completions"] == 256 and job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "8x8x16"}
    container = pod["containers"][0]
    assert container["resources"]["limits"] == {"google.com/tpu": "4"}
    assert container["command"] + container["args"] == ["/opt/venv/bin/python", "-m", "train_jobs.pretrain",
                                                        "--profile", "xgen-small-4b", "--run-id", RUN]
    env = {item["name"]: item for item in container["env"]}
    hostnames = env["TPU_WORKER_HOSTNAMES"]["value"].split(",")
    assert len(hostnames) == 256 and hostnames[0] == f"{name}-slice-0-0.{name}"
    assert env["TPU_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"].endswith(
        "['batch.kubernetes.io/job-completion-index']")
    assert env["JAX_COORDINATOR_ADDRESS"]["value"] == f"{hostnames[0]}:8476"
    assert {"containerPort": 8476} in container["ports"]


def test_the_indexed_job_variant_names_its_pods_through_a_headless_service():
    spec = spec_for("kubernetes", "pretrain", "xgen-small-4b", ("orchestration.kubernetes.tpu.multi_host=indexed_job",))
    manifest = spec["manifest"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("batch/v1", "Job")
    name = manifest["metadata"]["name"]
    job = manifest["spec"]
    assert job["parallelism"] == job["completions"] == 256 and job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    assert pod["subdomain"] == name and spec["service"]["spec"] == {"clusterIP": "None",
                                                                       "selector": {"job-name": name}}
    assert job["template"]["metadata"]["labels"]["job-name"] == name
    hosts = {e["name"]: e for e in pod["containers"][0]["env"]}["TPU_WORKER_HOSTNAMES"]["value"].split(",")
    assert hosts[:2] == [f"{name}-0.{name}", f"{name}-1.{name}"]


def test_a_stage_with_its_own_topology_gets_a_slice_of_that_size():
    """Paper profiles post-train on v5p 4x4x4: 64 chips, 16 hosts (their batches do not split over 1,024 chips)."""
    job = spec_for("kubernetes", "grpo", "xgen-small-9b")["manifest"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 16
    assert job["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4x4"
    env = {e["name"]: e for e in job["template"]["spec"]["containers"][0]["env"]}
    assert len(env["TPU_WORKER_HOSTNAMES"]["value"].split(",")) == 16
    with pytest.raises(XgenError, match="tpu_topologies"):
        load_config("tiny", ["orchestration.kubernetes.tpu_topologies.grpo=4x4xfour"])


def test_single_host_stages_are_one_pod_with_the_resources_their_stage_row_names():
    spark_pod = spec_for("kubernetes", "dedup", "tiny")["manifest"]
    assert spark_pod["kind"] == "Pod" and "nodeSelector" not in spark_pod["spec"]
    assert spark_pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi"}
    cpu_pod = spec_for("kubernetes", "tokenizer", "tiny")["manifest"]
    assert cpu_pod["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
    one_host_tpu = spec_for("kubernetes", "pretrain", "tiny")["manifest"]  # 2x2x1 = 4 chips = one host
    assert one_host_tpu["kind"] == "Pod"
    assert one_host_tpu["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x2x1"
    assert one_host_tpu["spec"]["containers"][0]["resources"]["limits"] == {"google.com/tpu": "4"}


def test_dedup_as_a_dataproc_serverless_batch_runs_the_entrypoint_file_in_the_pipeline_image():
    spec = spec_for("dataproc", "dedup", "xgen-small-4b")
    assert (spec["project_id"], spec["region"]) == ("xgen-project", "us-central1")
    batch = spec["batch"]
    assert batch["pyspark_batch"] == {"main_python_file_uri": "file:///app/data_jobs/dedup.py",
                                      "args": ["--profile", "xgen-small-4b", "--run-id", RUN]}
    assert batch["runtime_config"]["container_image"] == "us-docker.pkg.dev/xgen/xgen/pipeline:latest"
    assert batch["runtime_config"]["properties"]["spark.executor.memory"] == "24g"
    assert batch["runtime_config"]["properties"]["spark.pyspark.python"] == "/opt/venv/bin/python"
    assert specs.valid_k8s_name(spec["batch_id"])  # Dataproc batch ids: [a-z0-9-]{4,63}
    assert spec["batch_id"] == spec_for("dataproc", "dedup", "xgen-small-4b")["batch_id"]  # resubmit = same batch


def test_spark_backends_refuse_stages_that_are_not_spark():
    with pytest.raises(ValueError, match="backend dataproc runs Spark stages only; pretrain is a jax stage"):
        spec_for("dataproc", "pretrain", "tiny")


def test_the_spark_submit_line_is_the_one_the_provider_hook_builds(monkeypatch):
    spec = spec_for("spark-submit", "dedup", "tiny")
    assert spec["command"][:3] == ["spark-submit", "--master", "spark://127.0.0.1:7077"]
    assert spec["command"][-5:] == [specs.entrypoint_file(get_stage("dedup")), "--profile", "tiny", "--run-id", RUN]
    assert "spark.sql.adaptive.enabled=false" in spec["command"]  # booleans as Spark writes them
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "spark://127.0.0.1",
                                                                 "port": 7077}))
    operator = dict(spec["operator"])
    hook = SparkSubmitHook(conf=operator["conf"], conn_id=operator["conn_id"], name=operator["name"],
                           executor_memory=operator["executor_memory"])
    built = hook._build_spark_submit_command(operator["application"])
    built += operator["application_args"]
    assert built[0] == "spark-submit" and built[built.index("--master") + 1] == "spark://127.0.0.1:7077"
    assert built[-5:] == spec["command"][-5:]
    pairs = lambda line: sorted(line[i + 1] for i, arg in enumerate(line) if arg == "--conf")  # noqa: E731
    assert pairs(built) == pairs(spec["command"])


def test_the_docker_spec_runs_the_same_argv_in_the_pipeline_image_with_the_artifacts_mounted(tmp_path):
    spec = spec_for("docker", "ingest", "tiny", (f"orchestration.docker.artifacts_mount={tmp_path}",))
    container = spec["container"]
    assert container["entrypoint"] + container["command"] == [
        "/opt/venv/bin/python", "-m", "data_jobs.ingest", "--profile", "tiny", "--run-id", RUN]
    assert container["mounts"] == [{"source": str(tmp_path), "target": str(tmp_path), "type": "bind"}]
    assert container["environment"]["SPARK_LOCAL_IP"] == "127.0.0.1"  # local[2] inside the container
    yarn = spec_for("docker", "ingest", "tiny", ("spark.master=yarn",))
    assert "SPARK_LOCAL_IP" not in yarn["container"]["environment"]


def test_provider_operators_are_built_from_the_rendered_specs():
    from operators.backends import provider_operator

    pod = provider_operator("kubernetes", spec_for("kubernetes", "dedup", "tiny"), "dedup")
    assert type(pod).__name__ == "KubernetesPodOperator" and pod.pod_template_dict["kind"] == "Pod"
    job_spec = spec_for("kubernetes", "pretrain", "xgen-small-4b", ("orchestration.kubernetes.tpu.multi_host=indexed_job",))
    job = provider_operator("kubernetes", job_spec, "pretrain")
    assert type(job).__name__ == "KubernetesJobOperator"
    assert (job.completions, job.parallelism, job.completion_mode) == (256, 256, "Indexed")
    jobset = provider_operator("kubernetes", spec_for("kubernetes", "pretrain", "xgen-small-4b"), "pretrain")
    assert type(jobset).__name__ == "JobSetOperator"
    docker = provider_operator("docker", spec_for("docker", "ingest", "tiny"), "ingest")
    assert type(docker).__name__ == "DockerOperator" and docker.command[0] == "data_jobs.ingest"
    submit = provider_operator("spark-submit", spec_for("spark-submit", "dedup", "tiny"), "dedup")
    assert type(submit).__name__ == "SparkSubmitOperator"


def test_the_jobset_operator_waits_for_completed_and_deletes_on_kill():
    from operators.jobset import JobSetFailed, JobSetOperator

    calls = []

    class FakeHook:
        def __init__(self, states):
            self.states = list(states)

        def create_custom_object(self, group, version, plural, body, namespace):
            calls.append(("create", plural, body["metadata"]["name"], namespace))

        def get_custom_object(self, group, version, plural, name, namespace):
            state = self.states.pop(0)
            return {"status": {"conditions": [{"type": state, "status": "True"}] if state else []}}

        def delete_custom_object(self, group, version, plural, name, namespace, **kwargs):
            calls.append(("delete", name, kwargs))

    manifest = spec_for("kubernetes", "pretrain", "xgen-small-4b")["manifest"]
    operator = JobSetOperator(task_id="pretrain", manifest=manifest, poll_s=0)
    operator._hook = FakeHook([None, None, "Completed"])
    assert operator.execute({}) == [f"jobset {manifest['metadata']['name']}: Completed"]
    assert calls[0] == ("create", "jobsets", manifest["metadata"]["name"], "xgen")
    operator._hook = FakeHook(["Failed"])
    with pytest.raises(JobSetFailed, match="failed"):
        operator.execute({})
    operator.on_kill()
    assert calls[-1] == ("delete", manifest["metadata"]["name"], {"propagation_policy": "Foreground"})


def test_render_prints_each_spec_and_refuses_unknown_stages():
    def render_cli(*args):
        return subprocess.run([sys.executable, "-m", "operators.render", *args], capture_output=True, text=True,
                              timeout=120)

    line = render_cli("--backend", "spark-submit", "--stage", "dedup", "--profile", "tiny")
    assert line.returncode == 0 and shlex.split(line.stdout)[:3] == ["spark-submit", "--master", "spark://127.0.0.1:7077"]
    jobset = render_cli("--backend", "kubernetes", "--stage", "pretrain", "--profile", "xgen-small-4b", "--json")
    assert json.loads(jobset.stdout)["manifest"]["kind"] == "JobSet"
    batch = render_cli("--backend", "dataproc", "--stage", "dedup", "--profile", "xgen-small-4b")
    assert "container_image: us-docker.pkg.dev/xgen/xgen/pipeline:latest" in batch.stdout
    unknown = render_cli("--backend", "docker", "--stage", "nope")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown stage 'nope'")
