"""Typed pipeline config: configs/base.yaml holds every default, a profile overrides, `key=value` overrides last.

Every section forbids unknown keys, so a typo fails at load with the key's path and the keys allowed there.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator,
)
from pydantic_core import PydanticCustomError

from xgen_core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_PROFILE = "base"

# One LR phase per curriculum stage, in order (xgen_core/train/schedule.py spans each phase over its stage).
CURRICULUM_PHASES = ("warmup", "constant", "slow_decay", "fast_decay")

Seed = Annotated[int, Field(ge=0, lt=2**32)]  # numpy's and JAX's uint32 seeds
Share = Annotated[float, Field(ge=0, le=1)]  # a probability, a fraction or a percentile
Threshold = Annotated[float, Field(gt=0, le=1)]
MeshAxis = Annotated[int, Field(ge=-1)]  # devices along a mesh axis; -1 = all remaining ones (0 is refused below)

CONFIG_RULE = "config_rule"  # error type of the cross-field checks: ctx names the key, its value, what is allowed


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """A cross-field check: fails with the key (relative to the section that checks it), its value and the rule."""
    if not ok:
        raise PydanticCustomError(CONFIG_RULE, "{allowed}", {"key": key, "value": value, "allowed": allowed})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SparkConfig(Section):
    master: str
    app_name: str
    driver_memory: str
    shuffle_partitions: int = Field(ge=1)
    class_data_sharing: bool
    conf: dict[str, str | int | float | bool]


class StorageConfig(Section):
    lease_ttl_s: float = Field(gt=0)
    heartbeat_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self):
        require(self.heartbeat_s < self.lease_ttl_s, "heartbeat_s", self.heartbeat_s,
                f"below lease_ttl_s ({self.lease_ttl_s:g}): a live writer's lease must not expire between heartbeats")
        return self


BackendName = Literal["local", "docker", "kubernetes", "dataproc", "spark-submit"]


class RetryConfig(Section):
    retries: int = Field(ge=0)
    delay_s: float = Field(gt=0)
    backoff: float = Field(ge=1)  # each retry waits backoff x the previous delay (Airflow's exponential back-off)
    max_delay_s: float = Field(gt=0)


class RefreshConfig(Section):
    schedule: str  # cron of xgen_data_refresh; one run per crawl snapshot
    snapshot_format: str  # strftime of the run's data interval start -> snapshot name, when no `snapshot` param
    inputs: str  # "{snapshot}" is replaced; empty = the `inputs` param or the profile's ingest.inputs


class TpuResources(Section):
    accelerator: str  # GKE node label cloud.google.com/gke-tpu-accelerator, e.g. tpu-v5p-slice
    topology: str  # cloud.google.com/gke-tpu-topology, e.g. 8x8x16
    chips_per_host: int = Field(ge=1)
    multi_host: Literal["jobset", "indexed_job"]

    @property
    def hosts(self) -> int:
        chips = math.prod(int(side) for side in self.topology.split("x"))
        return max(1, chips // self.chips_per_host)

    @field_validator("topology")
    @classmethod
    def _topology_shape(cls, value: str) -> str:
        return checked_topology(value)


def checked_topology(value: str) -> str:
    if not all(side.isdigit() and int(side) > 0 for side in value.split("x")):
        raise ValueError(f"topology {value!r} is not like 2x2x1 or 4x4")
    return value


class PodResources(Section):
    cpu: str
    memory: str


class KubernetesConfig(Section):
    namespace: str
    service_account: str
    cpu: PodResources  # pods of stages whose Stage.resources is cpu
    spark: PodResources  # a Spark stage's driver pod (local[*] inside it) when Spark stages run on Kubernetes
    tpu: TpuResources
    # stage -> topology of its own slice (same accelerator, hosts and launcher as `tpu`): post-training batches
    # that do not split over the pretraining slice's chips run on a smaller one
    tpu_topologies: dict[str, str]
    coordinator_port: int = Field(ge=1, le=65535)  # jax.distributed coordinator on host 0 of a multi-host slice
    compile: PodResources  # the CPU pod that compiles a TPU stage's step for its slice first (operators/compile_gate.py)

    @field_validator("tpu_topologies")
    @classmethod
    def _stage_topologies(cls, value: dict[str, str]) -> dict[str, str]:
        return {stage: checked_topology(topology) for stage, topology in value.items()}

    def tpu_for(self, stage: str) -> TpuResources:
        """The slice `stage` runs on: `tpu`, with its own topology where `tpu_topologies` names one."""
        if stage not in self.tpu_topologies:
            return self.tpu
        return TpuResources(**{**self.tpu.model_dump(), "topology": self.tpu_topologies[stage]})


class DockerConfig(Section):
    url: str  # Docker API socket (podman system service serves one)
    network_mode: str
    artifacts_mount: str  # host folder bind-mounted at the same path in the container; empty = none


class DataprocConfig(Section):
    project: str
    region: str
    service_account: str
    subnetwork: str
    runtime_version: str


class SparkSubmitConfig(Section):
    master: str  # spark://host:7077 or yarn
    conn_id: str  # Airflow connection of the master (SparkSubmitOperator)
    deploy_mode: Literal["client", "cluster"]
    executor_memory: str
    total_executor_cores: int = Field(ge=0)  # 0 = all the master offers


class OrchestrationConfig(Section):
    backend: BackendName
    python: str
    backends: dict[str, BackendName]  # stage group (data | train | eval | ...) -> backend; groups not named use backend
    image: str  # the pipeline image every containerised backend runs
    timeouts_s: dict[str, float]  # stage -> execution_timeout; "default" for the others
    retry: RetryConfig
    refresh: RefreshConfig
    docker: DockerConfig
    kubernetes: KubernetesConfig
    dataproc: DataprocConfig
    spark_submit: SparkSubmitConfig

    def backend_of(self, group: str) -> str:
        return self.backends.get(group, self.backend)

    def timeout_s(self, stage: str) -> float:
        return self.timeouts_s.get(stage, self.timeouts_s["default"])

    @model_validator(mode="after")
    def _default_timeout(self):
        require("default" in self.timeouts_s, "timeouts_s", self.timeouts_s, "a 'default' entry")
        require(all(t > 0 for t in self.timeouts_s.values()), "timeouts_s", self.timeouts_s, "positive seconds")
        return self


class SampleCorpusConfig(Section):
    seed: Seed
    snapshots: list[str] = Field(min_length=1)
    code_docs: int = Field(ge=0)
    prose_docs: int = Field(ge=0)
    math_docs: int = Field(ge=0)
    web_docs: int = Field(ge=0)
    near_duplicate_rate: Share
    wet_fraction: Share

    @model_validator(mode="after")
    def _some_documents(self):
        total = self.code_docs + self.prose_docs + self.math_docs + self.web_docs
        require(total > 0, "web_docs", self.web_docs, "> 0 when the other *_docs counts are 0 (no documents at all)")
        return self


class IngestConfig(Section):
    inputs: list[str]
    max_bad_fraction: Share
    max_text_chars: int = Field(ge=1)
    language_model: str
    language_chars: int = Field(ge=1)
    default_snapshot: str
    append_to: str


class DedupConfig(Section):
    inputs: list[str]
    ngram: int = Field(ge=1)
    num_perm: int = Field(ge=1)
    seed: Seed
    hash_scheme: Literal["fast", "datasketch"]
    threshold: Threshold
    top_k: int = Field(ge=1)
    verify_jaccard: bool
    rank_by: list[Literal["quality", "recency", "length"]]
    rows_per_chunk: int = Field(ge=1)
    max_doc_chars: int = Field(ge=1)
    reuse_signatures_from: str

    @model_validator(mode="after")
    def _rank_keys_once(self):
        require(len(set(self.rank_by)) == len(self.rank_by), "rank_by", self.rank_by, "a list without repeats")
        return self


NEGATIVE_LABEL = "__label__negative"  # the label trained classifiers give their negatives


class ClassifierConfig(Section):
    name: str
    kind: Literal["quality", "domain"]
    positive_sources: list[str]
    negative_sources: list[str]
    # A fastText model file (local path, file:// or gs://) used as it is instead of training one; its sources stay [].
    model: str = ""
    # The label whose probability is the score: trained models write their positives with it.
    positive_label: str = "__label__positive"

    @field_validator("positive_label")
    @classmethod
    def label_names_a_positive_class(cls, label: str) -> str:
        if not label.startswith("__label__") or label == NEGATIVE_LABEL:
            raise ValueError(f"must start with '__label__' and differ from {NEGATIVE_LABEL!r}")
        return label


class FastTextConfig(Section):
    """Keyword arguments of fasttext.train_supervised, under fastText's own names."""

    dim: int = Field(ge=1)
    epoch: int = Field(ge=1)
    lr: float = Field(gt=0)
    wordNgrams: int = Field(ge=1)
    minCount: int = Field(ge=1)
    bucket: int = Field(ge=1)
    # fastText 0.9.2 initialises the input matrix in 10 blocks, one per training thread: below 10 threads part of it
    # stays uninitialised and training fails with "Encountered NaN" (4 and 5 of 8 runs at thread=1 and 2 here).
    thread: int = Field(ge=10)


class QualityTrainConfig(Section):
    classifiers: list[ClassifierConfig]
    reference_inputs: dict[str, list[str]]
    max_docs_per_class: int = Field(ge=1)
    holdout_fraction: float = Field(gt=0, lt=1)
    fasttext: FastTextConfig
    seed: Seed

    @model_validator(mode="after")
    def _classifiers_can_be_tested(self):
        require(int(self.max_docs_per_class * self.holdout_fraction) >= 1, "holdout_fraction", self.holdout_fraction,
                f"enough to hold out a document of each class of max_docs_per_class ({self.max_docs_per_class})")
        return self

    @field_validator("classifiers")
    @classmethod
    def names_are_unique(cls, classifiers: list[ClassifierConfig]) -> list[ClassifierConfig]:
        names = [c.name for c in classifiers]
        if len(set(names)) < len(names):
            raise ValueError(f"classifier names must be unique (each names its model and score column): {names}")
        return classifiers

    @field_validator("reference_inputs")
    @classmethod
    def every_classifier_has_positives(cls, references: dict[str, list[str]], info: ValidationInfo):
        classifiers = info.data.get("classifiers", [])
        names = [c.name for c in classifiers]
        unknown = sorted(set(references) - set(names))
        if unknown:
            raise ValueError(f"names no classifier: {unknown}; classifiers: {names}")
        for c in classifiers:
            if c.model and (c.positive_sources or c.negative_sources or references.get(c.name)):
                raise ValueError(
                    f"classifier {c.name!r} uses the model {c.model!r} as it is: it trains on nothing, so its "
                    "positive_sources, negative_sources and reference_inputs entry must stay empty"
                )
            if not c.model and not c.positive_sources and not references.get(c.name):
                raise ValueError(
                    f"classifier {c.name!r} has no positive documents: set quality_train.reference_inputs.{c.name} "
                    "(URIs of reference documents: JSONL, Parquet or WET), or its positive_sources, or its model"
                )
        return references


class SignalsConfig(Section):
    heuristics: dict[str, float]
    domain_tag_threshold: Threshold
    languages: list[str] = Field(min_length=1)
    min_language_score: Share
    decontam_ngram: int = Field(ge=1)
    eval_sets: list[Literal["humaneval", "math_eval", "long_context"]]
    output_files: int = Field(ge=1)

    @model_validator(mode="after")
    def _known_heuristic_limits(self):
        from xgen_core.data.heuristics import RULES

        for rule, limit in self.heuristics.items():
            key = f"heuristics.{rule}"
            require(rule in RULES, key, limit, f"a known rule name ({', '.join(RULES)})")
            require(limit >= 0 and (limit <= 1 or not rule.endswith("_ratio")), key, limit,
                    "a share in [0, 1]" if rule.endswith("_ratio") else ">= 0")
        for low, high in (("min_words", "max_words"), ("min_mean_word_length", "max_mean_word_length")):
            if low in self.heuristics and high in self.heuristics:
                require(self.heuristics[low] <= self.heuristics[high], f"heuristics.{low}", self.heuristics[low],
                        f"<= heuristics.{high} ({self.heuristics[high]:g})")
        return self


class SignalRuleConfig(Section):
    name: str
    kind: Literal["percentile", "tag", "buckets"]
    column: str
    buckets: list[tuple[float, float]]
    tag_weight: float = Field(ge=0)
    share: float = Field(ge=0)

    @model_validator(mode="after")
    def _buckets_fit_the_kind(self):
        if self.kind == "tag":
            require(not self.buckets, "buckets", self.buckets, "[] for a tag signal (it weighs by tag_weight)")
            return self
        bounds, weights = [b for b, _ in self.buckets], [w for _, w in self.buckets]
        require(bool(bounds), "buckets", self.buckets, f"at least one [upper bound, weight] for a {self.kind} signal")
        require(all(a < b for a, b in zip(bounds, bounds[1:])), "buckets", self.buckets, "strictly ascending bounds")
        require(min(weights) >= 0 and max(weights) > 0, "buckets", self.buckets, "weights >= 0, at least one > 0")
        if self.kind == "percentile":
            require(0 <= bounds[0] and bounds[-1] <= 1, "buckets", self.buckets, "percentile bounds in [0, 1]")
        return self


class CurriculumStageConfig(Section):
    name: str
    tokens: int = Field(ge=1)
    pl_share: Share
    min_quality_percentile: Share


class MixtureConfig(Section):
    signals: list[SignalRuleConfig]
    merge: Literal["mixture", "mean", "max"]
    stages: list[CurriculumStageConfig]
    pl_tag: str
    chars_per_token: float = Field(gt=0)
    seed: Seed
    output_files: int = Field(ge=1)
    top_k_per_cluster: int = Field(ge=1)

    @model_validator(mode="after")
    def _curriculum_and_signals(self):
        names = [stage.name for stage in self.stages]
        require(len(names) == len(CURRICULUM_PHASES), "stages", names,
                f"{len(CURRICULUM_PHASES)} curriculum stages, one per LR phase ({', '.join(CURRICULUM_PHASES)})")
        require(len(set(names)) == len(names), "stages", names, "unique stage names")
        signal_names = [signal.name for signal in self.signals]
        require(bool(signal_names), "signals", signal_names, "at least one signal")
        require(len(set(signal_names)) == len(signal_names), "signals", signal_names, "unique signal names")
        if self.merge == "mixture":
            require(sum(signal.share for signal in self.signals) > 0, "signals", [s.share for s in self.signals],
                    "shares summing to more than 0 (merge: mixture weighs each signal by its share)")
        return self


class TokenizerConfig(Section):
    vocab_size: int = Field(ge=1)
    min_frequency: int = Field(ge=0)
    max_documents: int = Field(ge=0)

    @model_validator(mode="after")
    def _room_for_the_byte_alphabet(self):
        from xgen_core.tokens.tokenizer import minimum_vocab_size

        require(self.vocab_size >= minimum_vocab_size(), "vocab_size", self.vocab_size,
                f">= {minimum_vocab_size()}, the byte alphabet plus the special tokens")
        return self


class PackConfig(Section):
    seq_len: int = Field(ge=1)
    heldout_fraction: float = Field(gt=0, lt=1)
    rows_per_shard: int = Field(ge=1)


class ModelConfig(Section):
    preset: str
    attention_impl: Literal["auto", "xla", "cudnn", "splash", "flash", "blockwise"]
    compute_dtype: Literal["bfloat16", "float32"]
    param_dtype: Literal["float32", "bfloat16"]
    remat: bool
    scan_layers: bool
    # Fields of the preset replaced (xgen_core/model/presets.py ModelSpec), e.g. the shapes of a model imported
    # from Hugging Face (`xgen model import-hf`). Left out of the dump while empty, so that configs without it
    # keep the versions they had.
    preset_overrides: dict[str, bool | int | float] = {}

    @field_validator("preset_overrides")
    @classmethod
    def _known_spec_fields(cls, overrides: dict) -> dict:
        import dataclasses

        from xgen_core.model.presets import ModelSpec

        fields = {f.name for f in dataclasses.fields(ModelSpec)} - {"name"}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown model field(s) {unknown}; known: {', '.join(sorted(fields))}")
        return overrides

    @model_serializer(mode="wrap")
    def _leave_out_empty_overrides(self, handler):
        dumped = handler(self)
        if not self.preset_overrides:
            dumped.pop("preset_overrides", None)
        return dumped

    def spec(self):
        """The ModelSpec: the preset with `preset_overrides` applied."""
        from xgen_core.model.presets import get_preset

        return get_preset(self.preset, **self.preset_overrides)


class MeshConfig(Section):
    data: MeshAxis
    fsdp: MeshAxis
    tensor: MeshAxis
    distributed: bool

    @model_validator(mode="after")
    def _one_remaining_axis(self):
        axes = {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}
        for axis, size in axes.items():
            require(size != 0, axis, size, ">= 1 devices, or -1 for all remaining devices")
        remaining = [axis for axis, size in axes.items() if size == -1]
        if len(remaining) > 1:
            require(False, remaining[1], -1,
                    f"a device count: only one axis may be -1 (all remaining devices), and {remaining[0]} already is")
        return self


class TrainConfig(Section):
    batch_size: int = Field(ge=1)
    grad_accum_steps: int = Field(ge=1)
    peak_lr: float = Field(gt=0)
    slow_decay_end_ratio: Threshold
    final_lr_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    b1: float = Field(ge=0, lt=1)
    b2: float = Field(ge=0, lt=1)
    eps: float = Field(gt=0)
    grad_clip: float = Field(gt=0)
    seed: Seed

    @model_validator(mode="after")
    def _decay_goes_down(self):
        require(self.final_lr_ratio < self.slow_decay_end_ratio, "final_lr_ratio", self.final_lr_ratio,
                f"below slow_decay_end_ratio ({self.slow_decay_end_ratio:g}): the fast decay goes down from there")
        return self


class TrainRunConfig(Section):
    """How a pretraining run executes: none of it changes the trained model, so none of it versions the artifact."""

    max_steps: int | None = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    eval_every: int = Field(ge=1)
    eval_batches: int = Field(ge=1)
    spike_factor: float = Field(gt=1)
    spike_warmup_steps: int = Field(ge=0)
    peak_flops_per_device: float | None = Field(gt=0)
    mesh: MeshConfig
    # Stage -> devices that split each sequence of that stage (context parallelism; unlisted stages: 1). How a
    # stage runs, not what it trains, so here and not in the versioned extend_* sections.
    context_parallel: dict[Literal["pretrain", "extend_32k", "extend_128k"], Annotated[int, Field(ge=1)]] = {}


class RulerConfig(Section):
    """The `ruler` eval stage: RULER's synthetic tasks at each length (xgen_core/evals/ruler_tasks.py)."""

    tasks: list[str] = Field(min_length=1)
    lengths: list[int] = Field(min_length=1)
    samples: int = Field(ge=1)
    max_new_tokens: int = Field(ge=0)  # caps RULER's per-task tokens to generate; 0 = RULER's own
    batch_size: int = Field(ge=1)
    seed: Seed
    max_documents: int = Field(ge=2)
    documents: str
    models: list[str]

    @model_validator(mode="after")
    def _known_tasks_and_lengths(self):
        from xgen_core.evals.ruler_tasks import TASKS

        for index, task in enumerate(self.tasks):
            require(task in TASKS, f"tasks.{index}", task, f"a RULER task ({', '.join(TASKS)})")
        require(len(set(self.tasks)) == len(self.tasks), "tasks", self.tasks, "a list without repeats")
        require(all(n > 0 for n in self.lengths), "lengths", self.lengths, "positive token counts")
        require(len(set(self.lengths)) == len(self.lengths), "lengths", self.lengths, "a list without repeats")
        return self


class MathEvalConfig(Section):
    """The `math_eval` eval stage: GSM8K-format files and a generated arithmetic set, checked by math-verify."""

    files: list[str]
    generated: int = Field(ge=0)
    max_problems: int = Field(ge=0)  # per file; 0 = all
    max_new_tokens: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    seed: Seed
    models: list[str]
class HumanEvalSettingConfig(Section):
    """One sampling setting: `samples` completions per problem at `temperature` (0 = greedy)."""

    samples: int = Field(ge=1)
    temperature: float = Field(ge=0)

    @model_validator(mode="after")
    def _greedy_samples_once(self):
        require(self.temperature > 0 or self.samples == 1, "samples", self.samples,
                "1 at temperature 0: greedy decoding gives the same completion every time")
        return self


class HumanEvalConfig(Section):
    """The `humaneval` stage: HumanEval problems completed by the sampler, run in the code sandbox, scored pass@k."""

    task_ids: list[str]
    problems: int = Field(ge=0)
    settings: list[HumanEvalSettingConfig] = Field(min_length=1)
    ks: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=1)
    stop_sequences: list[Annotated[str, Field(min_length=1)]]
    batch_size: int = Field(ge=1)
    timeout_s: float = Field(gt=0)
    workers: int = Field(ge=1)
    seed: Seed


class GeneratedDataConfig(Section):
    """Post-training data the project generates from the seed when no files are given (see posttrain/data.py)."""

    general: int = Field(ge=0)
    safety: int = Field(ge=0)
    reasoning: int = Field(ge=0)
    max_operand: int = Field(ge=1)  # arithmetic operands are drawn from 0..max_operand
    code_share: Share  # share of the reasoning examples that are Python functions rather than arithmetic


class SftConfig(Section):
    """Supervised fine-tuning (paper 4.1): assistant-only loss over packed chat examples."""

    data: list[str]  # JSONL / Parquet files or folders of {"messages", "category"}; empty = generate
    generate: GeneratedDataConfig
    heldout_fraction: float = Field(gt=0, lt=1)
    seq_len: int = Field(ge=8)
    batch_size: int = Field(ge=1)
    epochs: float = Field(gt=0)
    peak_lr: float = Field(gt=0)
    warmup_fraction: Share
    final_lr_ratio: float = Field(ge=0, le=1)
    weight_decay: float = Field(ge=0)
    seed: Seed


class DpoConfig(Section):
    """Direct preference optimisation (paper 4.2) against the frozen SFT model's stored log-probabilities."""

    data: list[str]  # JSONL / Parquet of {"prompt", "chosen", "rejected"}; empty = generate
    generate: GeneratedDataConfig
    heldout_fraction: float = Field(gt=0, lt=1)
    max_len: int = Field(ge=8)  # prompt + completion tokens; longer pairs are quarantined
    batch_size: int = Field(ge=1)  # pairs per step
    epochs: float = Field(gt=0)
    beta: float = Field(gt=0)
    peak_lr: float = Field(gt=0)
    warmup_fraction: Share
    final_lr_ratio: float = Field(ge=0, le=1)
    weight_decay: float = Field(ge=0)
    seed: Seed


class GrpoConfig(Section):
    """Group relative policy optimisation with verifiable rewards (paper 4.3)."""

    data: list[str]  # JSONL / Parquet of {"prompt", "answer"} or {"prompt", "tests"}; empty = generate
    math_prompts: int = Field(ge=0)  # generated prompts
    code_prompts: int = Field(ge=0)
    max_operand: int = Field(ge=1)
    math_kinds: list[str]  # generated maths kinds (posttrain/data.py MATH_KINDS); [] = the whole family's mix
    heldout_prompts: int = Field(ge=1)  # prompts kept out of training; the reward is measured on them
    steps: int = Field(ge=1)
    prompts_per_step: int = Field(ge=1)
    group_size: int = Field(ge=2)  # G samples per prompt
    updates_per_batch: int = Field(ge=1)  # optimizer steps on each batch of rollouts (1 = on-policy)
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    clip_eps: float = Field(gt=0)
    kl_coef: float = Field(ge=0)  # 0: no KL term and no reference model (paper)
    advantage_eps: float = Field(gt=0)
    peak_lr: float = Field(gt=0)
    warmup_fraction: Share
    weight_decay: float = Field(ge=0)
    code_timeout_s: float = Field(gt=0)
    seed: Seed


class PosttrainRunConfig(Section):
    """How a post-training stage executes: cadences and the step limit, never part of the artifact version."""

    max_steps: int | None = Field(ge=1)
    checkpoint_every: int = Field(ge=1)
    keep_checkpoints: int = Field(ge=1)
    eval_every: int = Field(ge=1)


class ExtendConfig(Section):
    """One length-extension stage (paper 3.4): pretraining continued at a longer length and a larger RoPE base,
    from the previous stage's final parameters with a fresh optimizer, on a long-document mixture."""

    seq_len: int = Field(ge=2)            # training sequence length (rows hold seq_len + 1 tokens)
    max_seq_len: int = Field(ge=2)        # the model's maximum length after the stage (RoPE table size)
    rope_theta: float = Field(gt=0)
    tokens: int = Field(ge=1)             # token budget of the stage
    batch_size: int = Field(ge=1)
    grad_accum_steps: int = Field(ge=1)
    peak_lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=1)       # linear warm-up, then linear decay to final_lr_ratio x peak
    final_lr_ratio: float = Field(ge=0, lt=1)
    attention_impl: Literal["auto", "xla", "cudnn", "splash", "flash", "blockwise"]
    long_share: Share                     # share of the stage's characters from long (concatenated) documents
    long_doc_tokens: int = Field(ge=1)    # a long document is grown from one group's documents to this length
    group_by: str                         # mixture column whose documents are concatenated in order (site, repo)
    short_stages: list[str]               # curriculum stages the short documents come from
    eval_rows: int = Field(ge=1)          # held-out rows of the stage's own mixture for the held-out loss
    retrieval_share: Share                # share of characters from synthetic retrieval documents (0: none)
    retrieval_tasks: list[str]            # RULER task generators that make them (answers included)
    retrieval_min_tokens: int = Field(ge=32)  # their lengths in tokens spread uniformly over [min, max]
    retrieval_max_tokens: int = Field(ge=32)  # (packing cuts a longer one into rows like any long document)
    whole_documents: bool                 # a document that fits a row is never split across two (padding instead)
    copy_share: Share                     # share of characters from synthetic copy documents (0: none)
    copy_pairs: int = Field(ge=1)         # a copy document holds 1 to copy_pairs key-value lines
    copy_repeats: int = Field(ge=0)       # its listing is repeated verbatim this many times before the recall

    @model_validator(mode="after")
    def _fits_the_model(self):
        require(self.seq_len <= self.max_seq_len, "max_seq_len", self.max_seq_len, f">= seq_len ({self.seq_len})")
        require(self.batch_size % self.grad_accum_steps == 0, "grad_accum_steps", self.grad_accum_steps,
                f"a divisor of batch_size ({self.batch_size})")
        require(self.retrieval_share + self.copy_share <= 1, "copy_share", self.copy_share,
                f"<= 1 - retrieval_share ({1 - self.retrieval_share:g})")
        if self.retrieval_share:
            require(self.retrieval_min_tokens <= self.retrieval_max_tokens, "retrieval_min_tokens",
                    self.retrieval_min_tokens, f"<= retrieval_max_tokens ({self.retrieval_max_tokens})")
            from xgen_core.evals.ruler_tasks import TASKS

            unknown = [t for t in self.retrieval_tasks if t not in TASKS]
            require(self.retrieval_tasks and not unknown, "retrieval_tasks", self.retrieval_tasks,
                    f"RULER tasks ({', '.join(TASKS)})")
        return self


class XgenConfig(Section):
    profile: str
    root: str
    seed: Seed
    spark: SparkConfig
    storage: StorageConfig
    orchestration: OrchestrationConfig
    sample_corpus: SampleCorpusConfig
    ingest: IngestConfig
    dedup: DedupConfig
    quality_train: QualityTrainConfig
    signals: SignalsConfig
    mixture: MixtureConfig
    tokenizer: TokenizerConfig
    pack: PackConfig
    model: ModelConfig
    train: TrainConfig
    train_run: TrainRunConfig
    ruler: RulerConfig
    math_eval: MathEvalConfig
    humaneval: HumanEvalConfig
    sft: SftConfig
    dpo: DpoConfig
    grpo: GrpoConfig
    posttrain_run: PosttrainRunConfig
    extend_32k: ExtendConfig
    extend_128k: ExtendConfig

    def curriculum(self) -> dict[str, int]:
        """Curriculum stage name -> token budget, in training order: mixture, packing and the LR schedule share it."""
        return {stage.name: stage.tokens for stage in self.mixture.stages}

    def section(self, dotted: str) -> Any:
        value: Any = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    def section_dump(self, dotted: str) -> Any:
        value = self.section(dotted)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    @model_validator(mode="after")
    def _batch_splits_evenly(self):
        train, mesh = self.train, self.train_run.mesh
        require(train.batch_size % train.grad_accum_steps == 0, "train.grad_accum_steps", train.grad_accum_steps,
                f"a divisor of train.batch_size ({train.batch_size})")
        micro_batch = train.batch_size // train.grad_accum_steps
        batch_devices = math.prod(size for size in (mesh.data, mesh.fsdp) if size != -1)
        require(micro_batch % batch_devices == 0, "train.batch_size", train.batch_size,
                f"a multiple of {train.grad_accum_steps * batch_devices}: train.grad_accum_steps "
                f"({train.grad_accum_steps}) micro-batches, each split over the {batch_devices} devices of the fixed "
                "train_run.mesh data x fsdp axes")
        return self

    @model_validator(mode="after")
    def _model_fits_tokenizer(self):
        from xgen_core.model.presets import PRESETS

        preset = PRESETS.get(self.model.preset)
        require(preset is not None, "model.preset", self.model.preset, f"one of {', '.join(PRESETS)}")
        preset = self.model.spec()
        require(self.tokenizer.vocab_size <= preset.vocab_size, "tokenizer.vocab_size", self.tokenizer.vocab_size,
                f"<= the {preset.vocab_size} embedding rows of model preset {preset.name}")
        return self

    @model_validator(mode="after")
    def _mixture_reads_existing_scores(self):
        kinds = {c.name: c.kind for c in self.quality_train.classifiers}
        domains = [name for name, kind in kinds.items() if kind == "domain"]
        require("quality" in kinds.values(), "quality_train.classifiers", list(kinds),
                "at least one kind: quality classifier (the mixture ranks clusters by the quality scores)")
        for index, signal in enumerate(self.mixture.signals):
            key = f"mixture.signals.{index}.column"
            if signal.kind == "tag":
                require(signal.column in domains, key, signal.column, f"a domain classifier: {', '.join(domains)}")
            elif signal.column.startswith(("quality_", "domain_")):
                kind, _, name = signal.column.partition("_")
                require(kinds.get(name) == kind, key, signal.column,
                        f"the score column of a classifier: {', '.join(f'{k}_{n}' for n, k in kinds.items())}")
        require(self.mixture.pl_tag in domains, "mixture.pl_tag", self.mixture.pl_tag,
                f"a domain classifier: {', '.join(domains)}")
        return self


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != BASE_PROFILE)


def load_config(profile: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> XgenConfig:
    """base.yaml <- configs/{profile}.yaml <- overrides ("a.b=c", value parsed as YAML)."""
    if profile not in available_profiles():
        raise ConfigError(f"unknown profile {profile!r}; available: {', '.join(available_profiles())}")
    tree = _read_yaml(CONFIG_DIR / f"{BASE_PROFILE}.yaml")
    _merge(tree, _read_yaml(CONFIG_DIR / f"{profile}.yaml"))
    tree["profile"] = profile
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    return validate_config(tree)


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def validate_config(tree: dict) -> XgenConfig:
    try:
        return XgenConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def config_to_json(cfg: XgenConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=False)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: top level must be a mapping")
    return data


def _merge(base: dict, update: dict, model: type[BaseModel] = None, path: str = "") -> None:
    model = model or XgenConfig
    for key, value in update.items():
        sub_model = _field_model(model, key, path)
        if sub_model is not None and isinstance(value, dict):
            _merge(base.setdefault(key, {}), value, sub_model, f"{path}{key}.")
        else:
            base[key] = copy.deepcopy(value)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node, model = tree, XgenConfig
    for depth, part in enumerate(parts[:-1]):
        sub_model = _field_model(model, part, ".".join(parts[:depth]))
        if sub_model is None:
            if _is_free_map(model, part):  # keys of a free map may hold dots: spark.conf.spark.executor.memory
                node.setdefault(part, {})[".".join(parts[depth + 1 :])] = value
                return
            raise ConfigError(f"config key {'.'.join(parts[: depth + 1])!r} is a value, not a section")
        node, model = node.setdefault(part, {}), sub_model
    _field_model(model, parts[-1], ".".join(parts[:-1]))
    node[parts[-1]] = value


def _field_model(model: type[BaseModel], key: str, path: str) -> type[BaseModel] | None:
    """The section class behind `key`, None for a plain value; unknown keys fail with the allowed ones."""
    field = model.model_fields.get(key)
    if field is None:
        where = f"{path}.{key}" if path else key
        raise ConfigError(f"unknown config key {where!r}; allowed here: {', '.join(model.model_fields)}")
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _is_free_map(model: type[BaseModel], key: str) -> bool:
    return getattr(model.model_fields[key].annotation, "__origin__", None) is dict


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown config key {key!r}; allowed here: {_allowed_at(err['loc'][:-1])}")
        elif err["type"] == "missing":
            problems.append(f"config key {key!r} is missing (base.yaml must define every key)")
        elif err["type"] == CONFIG_RULE:
            ctx = err["ctx"]
            key = ".".join([*(str(p) for p in err["loc"]), ctx["key"]])
            problems.append(f"config key {key!r}: must be {ctx['allowed']} (got {ctx['value']!r})")
        else:
            problems.append(f"config key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def _allowed_at(loc: tuple) -> str:
    model: Any = XgenConfig
    for part in loc:
        model = model.model_fields[part].annotation
    return ", ".join(model.model_fields)
