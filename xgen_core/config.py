"""Typed pipeline config: configs/base.yaml holds every default, a profile overrides, `key=value` overrides last.

Every section forbids unknown keys, so a typo fails at load with the key's path and the keys allowed there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from xgen_core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_PROFILE = "base"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparkConfig(Section):
    master: str
    app_name: str
    driver_memory: str
    shuffle_partitions: int
    class_data_sharing: bool
    conf: dict[str, str | int | float | bool]


class StorageConfig(Section):
    lease_ttl_s: float
    heartbeat_s: float


class OrchestrationConfig(Section):
    backend: Literal["local"]
    python: str


class SampleCorpusConfig(Section):
    seed: int
    snapshots: list[str]
    code_docs: int
    prose_docs: int
    math_docs: int
    web_docs: int
    near_duplicate_rate: float
    wet_fraction: float


class IngestConfig(Section):
    inputs: list[str]
    max_bad_fraction: float
    max_text_chars: int
    language_model: str
    language_chars: int
    default_snapshot: str
    append_to: str


class DedupConfig(Section):
    inputs: list[str]
    ngram: int
    num_perm: int
    seed: int
    hash_scheme: Literal["fast", "datasketch"]
    threshold: float
    top_k: int
    verify_jaccard: bool
    rank_by: list[Literal["quality", "recency", "length"]]
    rows_per_chunk: int
    max_doc_chars: int
    reuse_signatures_from: str


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

    dim: int
    epoch: int
    lr: float
    wordNgrams: int
    minCount: int
    bucket: int
    # fastText 0.9.2 initialises the input matrix in 10 blocks, one per training thread: below 10 threads part of it
    # stays uninitialised and training fails with "Encountered NaN" (4 and 5 of 8 runs at thread=1 and 2 here).
    thread: Annotated[int, Field(ge=10)]


class QualityTrainConfig(Section):
    classifiers: list[ClassifierConfig]
    reference_inputs: dict[str, list[str]]
    max_docs_per_class: int
    holdout_fraction: float
    fasttext: FastTextConfig
    seed: int

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
    domain_tag_threshold: float
    languages: list[str]
    min_language_score: float
    decontam_ngram: int
    eval_sets: list[Literal["humaneval", "math_eval", "long_context"]]
    output_files: int


class SignalRuleConfig(Section):
    name: str
    kind: Literal["percentile", "tag", "buckets"]
    column: str
    buckets: list[tuple[float, float]]
    tag_weight: float
    share: float


class CurriculumStageConfig(Section):
    name: str
    tokens: int
    pl_share: float
    min_quality_percentile: float


class MixtureConfig(Section):
    signals: list[SignalRuleConfig]
    merge: Literal["mixture", "mean", "max"]
    stages: list[CurriculumStageConfig]
    pl_tag: str
    chars_per_token: float
    seed: int
    output_files: int
    top_k_per_cluster: Annotated[int, Field(ge=1)]


class TokenizerConfig(Section):
    vocab_size: int
    min_frequency: int
    max_documents: int


class PackConfig(Section):
    seq_len: int
    heldout_fraction: float
    rows_per_shard: int


class ModelConfig(Section):
    preset: str
    attention_impl: Literal["auto", "xla", "cudnn", "splash", "flash"]
    compute_dtype: Literal["bfloat16", "float32"]
    param_dtype: Literal["float32", "bfloat16"]
    remat: bool
    scan_layers: bool


class MeshConfig(Section):
    data: int
    fsdp: int
    tensor: int
    distributed: bool


class TrainConfig(Section):
    batch_size: int
    grad_accum_steps: int
    peak_lr: float
    slow_decay_end_ratio: float
    final_lr_ratio: float
    weight_decay: float
    b1: float
    b2: float
    eps: float
    grad_clip: float
    seed: int


class TrainRunConfig(Section):
    """How a pretraining run executes: none of it changes the trained model, so none of it versions the artifact."""

    max_steps: int | None
    checkpoint_every: int
    keep_checkpoints: int
    eval_every: int
    eval_batches: int
    spike_factor: float
    spike_warmup_steps: int
    peak_flops_per_device: float | None
    mesh: MeshConfig


class XgenConfig(Section):
    profile: str
    root: str
    seed: int
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
        else:
            problems.append(f"config key {key!r}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(problems)


def _allowed_at(loc: tuple) -> str:
    model: Any = XgenConfig
    for part in loc:
        model = model.model_fields[part].annotation
    return ", ".join(model.model_fields)
