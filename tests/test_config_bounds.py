"""Config values are range-checked at load: every numeric key has bounds, and settings that must agree are checked
together, each failure one line naming the key, the value and what is allowed."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import BaseModel

from xgen_core.config import CURRICULUM_PHASES, XgenConfig, available_profiles, load_config, validate_config
from xgen_core.errors import ConfigError

XGEN = str(Path(sys.executable).parent / "xgen")

STAGE = "{{name: {name}, tokens: 4096, pl_share: 0.5, min_quality_percentile: 0.0}}"
THREE_STAGES = "mixture.stages=[" + ", ".join(STAGE.format(name=n) for n in ("a", "b", "c")) + "]"
REPEATED_STAGES = "mixture.stages=[" + ", ".join(STAGE.format(name=n) for n in ("a", "b", "c", "a")) + "]"


def load_error(*overrides: str, profile: str = "tiny") -> str:
    with pytest.raises(ConfigError) as error:
        load_config(profile, list(overrides))
    return str(error.value)


@pytest.mark.parametrize(
    "override, key, allowed",
    [  # the issue's examples
        ("dedup.threshold=5", "dedup.threshold", "less than or equal to 1"),
        ("dedup.rows_per_chunk=0", "dedup.rows_per_chunk", "greater than or equal to 1"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps", "greater than or equal to 1"),
        ("train.slow_decay_end_ratio=0", "train.slow_decay_end_ratio", "greater than 0"),
        ("mixture.stages=[]", "mixture.stages", f"{len(CURRICULUM_PHASES)} curriculum stages, one per LR phase"),
    ],
)
def test_the_issues_examples_fail_at_load(override, key, allowed):
    value = override.partition("=")[2]
    message = load_error(override)
    assert message.startswith(f"config key {key!r}: ")
    assert allowed in message and f"(got {value})" in message


def test_config_show_with_a_bad_value_is_one_line_naming_key_value_and_rule():
    result = subprocess.run([XGEN, "config", "show", "--profile", "tiny", "dedup.threshold=5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: config key 'dedup.threshold': Input should be less than or equal to 1 (got 5)"
    ]


@pytest.mark.parametrize(
    "override, key",
    [
        ("seed=-1", "seed"),
        ("spark.shuffle_partitions=0", "spark.shuffle_partitions"),
        ("storage.lease_ttl_s=0", "storage.lease_ttl_s"),
        ("storage.heartbeat_s=-1", "storage.heartbeat_s"),
        ("storage.heartbeat_s=120", "storage.heartbeat_s"),  # tiny's lease_ttl_s: the lease would lapse
        ("sample_corpus.seed=4294967296", "sample_corpus.seed"),
        ("sample_corpus.code_docs=-1", "sample_corpus.code_docs"),
        ("sample_corpus.near_duplicate_rate=1.5", "sample_corpus.near_duplicate_rate"),
        ("sample_corpus.wet_fraction=-0.1", "sample_corpus.wet_fraction"),
        ("sample_corpus.snapshots=[]", "sample_corpus.snapshots"),
        ("ingest.max_bad_fraction=1.1", "ingest.max_bad_fraction"),
        ("ingest.max_text_chars=0", "ingest.max_text_chars"),
        ("ingest.language_chars=0", "ingest.language_chars"),
        ("dedup.ngram=0", "dedup.ngram"),
        ("dedup.num_perm=0", "dedup.num_perm"),
        ("dedup.seed=-1", "dedup.seed"),
        ("dedup.threshold=0", "dedup.threshold"),
        ("dedup.top_k=0", "dedup.top_k"),
        ("dedup.max_doc_chars=0", "dedup.max_doc_chars"),
        ("dedup.rank_by=[length, quality, length]", "dedup.rank_by"),
        ("quality_train.max_docs_per_class=0", "quality_train.max_docs_per_class"),
        ("quality_train.holdout_fraction=0", "quality_train.holdout_fraction"),
        ("quality_train.holdout_fraction=1", "quality_train.holdout_fraction"),
        ("quality_train.max_docs_per_class=4", "quality_train.holdout_fraction"),  # 4 x 0.2: nothing held out
        ("quality_train.fasttext.dim=0", "quality_train.fasttext.dim"),
        ("quality_train.fasttext.bucket=0", "quality_train.fasttext.bucket"),
        ("quality_train.fasttext.epoch=0", "quality_train.fasttext.epoch"),
        ("quality_train.fasttext.lr=0", "quality_train.fasttext.lr"),
        ("quality_train.fasttext.wordNgrams=0", "quality_train.fasttext.wordNgrams"),
        ("quality_train.fasttext.minCount=0", "quality_train.fasttext.minCount"),
        ("quality_train.fasttext.thread=2", "quality_train.fasttext.thread"),
        ("mixture.top_k_per_cluster=0", "mixture.top_k_per_cluster"),
        ("dedup.hash_scheme=sha1", "dedup.hash_scheme"),
        ("quality_train.seed=-1", "quality_train.seed"),
        ("signals.domain_tag_threshold=0", "signals.domain_tag_threshold"),
        ("signals.domain_tag_threshold=1.5", "signals.domain_tag_threshold"),
        ("signals.min_language_score=2", "signals.min_language_score"),
        ("signals.decontam_ngram=0", "signals.decontam_ngram"),
        ("signals.output_files=0", "signals.output_files"),
        ("signals.languages=[]", "signals.languages"),
        ("signals.heuristics.max_symbol_ratio=2", "signals.heuristics.max_symbol_ratio"),
        ("signals.heuristics.min_words=-1", "signals.heuristics.min_words"),
        ("signals.heuristics.min_wrds=1", "signals.heuristics.min_wrds"),  # ran to a ValueError in a Spark task
        ("signals.heuristics.min_words=200000", "signals.heuristics.min_words"),  # above max_words
        ("mixture.chars_per_token=0", "mixture.chars_per_token"),
        ("mixture.seed=-1", "mixture.seed"),
        ("mixture.output_files=0", "mixture.output_files"),
        (THREE_STAGES, "mixture.stages"),
        (REPEATED_STAGES, "mixture.stages"),
        ("mixture.signals=[]", "mixture.signals"),
        ("mixture.pl_tag=prose", "mixture.pl_tag"),  # not a domain tag: every document would count as NL
        ("tokenizer.vocab_size=0", "tokenizer.vocab_size"),
        ("tokenizer.vocab_size=262", "tokenizer.vocab_size"),  # below 256 bytes + 7 special tokens
        ("tokenizer.vocab_size=4096", "tokenizer.vocab_size"),  # more than the tiny preset's 2,048 embedding rows
        ("tokenizer.min_frequency=-1", "tokenizer.min_frequency"),
        ("tokenizer.max_documents=-1", "tokenizer.max_documents"),
        ("pack.seq_len=0", "pack.seq_len"),
        ("pack.heldout_fraction=0", "pack.heldout_fraction"),
        ("pack.rows_per_shard=0", "pack.rows_per_shard"),
        ("model.preset=xgen-small-1t", "model.preset"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.grad_accum_steps=3", "train.grad_accum_steps"),  # 16 sequences do not split into 3 micro-batches
        ("train.peak_lr=0", "train.peak_lr"),
        ("train.slow_decay_end_ratio=1.5", "train.slow_decay_end_ratio"),
        ("train.final_lr_ratio=-0.1", "train.final_lr_ratio"),
        ("train.final_lr_ratio=0.3", "train.final_lr_ratio"),  # equal to slow_decay_end_ratio: nothing to decay
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.b1=1", "train.b1"),
        ("train.b2=-0.1", "train.b2"),
        ("train.eps=0", "train.eps"),
        ("train.grad_clip=0", "train.grad_clip"),
        ("train.seed=-1", "train.seed"),
        ("train_run.checkpoint_every=0", "train_run.checkpoint_every"),
        ("train_run.keep_checkpoints=0", "train_run.keep_checkpoints"),
        ("train_run.eval_every=0", "train_run.eval_every"),
        ("train_run.eval_batches=0", "train_run.eval_batches"),
        ("train_run.spike_factor=1", "train_run.spike_factor"),
        ("train_run.spike_factor=.inf", "train_run.spike_factor"),
        ("train_run.spike_warmup_steps=-1", "train_run.spike_warmup_steps"),
        ("train_run.peak_flops_per_device=0", "train_run.peak_flops_per_device"),
        ("train_run.mesh.data=0", "train_run.mesh.data"),
        ("train_run.mesh.tensor=-2", "train_run.mesh.tensor"),
        ("train_run.mesh.data=3", "train.batch_size"),  # micro-batches of 8 do not split over 3 data shards
        ("train_run.max_steps=0", "train_run.max_steps"),
    ],
)
def test_out_of_range_values_fail_naming_the_key_and_value(override, key):
    message = load_error(override)
    assert f"config key {key!r}: " in message
    assert "(got " in message and ";" not in message  # one problem, one clause


def test_two_remaining_mesh_axes_fail_on_the_second():
    assert load_error("train_run.mesh.data=-1").startswith(
        "config key 'train_run.mesh.fsdp': must be a device count: only one axis may be -1 (all remaining devices), "
        "and data already is (got -1)"
    )


def test_fixed_batch_axes_must_divide_the_micro_batch_but_a_remaining_axis_is_left_to_the_runtime():
    assert load_config("tiny", ["train_run.mesh.fsdp=4"]).train_run.mesh.fsdp == 4  # 16 / 2 = 8 rows over 4 devices
    assert load_error("train_run.mesh.data=16", "train_run.mesh.fsdp=1") == (
        "config key 'train.batch_size': must be a multiple of 32: train.grad_accum_steps (2) micro-batches, each split "
        "over the 16 devices of the fixed train_run.mesh data x fsdp axes (got 16)"
    )
    assert load_config("xgen-small-4b", ["train_run.mesh.data=8"]).train_run.mesh.fsdp == -1


def _tree(profile: str = "tiny") -> dict:
    return load_config(profile).model_dump(mode="json")


def _validate_error(tree: dict) -> str:
    with pytest.raises(ConfigError) as error:
        validate_config(tree)
    return str(error.value)


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda t: t["mixture"]["signals"][0].update(column="quality_nothing"), "mixture.signals.0.column"),
        (lambda t: t["mixture"]["signals"][2].update(column="prose_ref"), "mixture.signals.2.column"),
        (lambda t: t["mixture"]["signals"][0].update(buckets=[[0.8, 1], [0.5, 2]]), "mixture.signals.0.buckets"),
        (lambda t: t["mixture"]["signals"][0].update(buckets=[[0.5, 1], [1.5, 2]]), "mixture.signals.0.buckets"),
        (lambda t: t["mixture"]["signals"][0].update(buckets=[]), "mixture.signals.0.buckets"),
        (lambda t: t["mixture"]["signals"][0].update(buckets=[[0.5, 0], [1.0, 0]]), "mixture.signals.0.buckets"),
        (lambda t: t["mixture"]["signals"][0].update(buckets=[[0.5, -1], [1.0, 2]]), "mixture.signals.0.buckets"),
        (lambda t: t["mixture"]["signals"][2].update(buckets=[[1, 2]]), "mixture.signals.2.buckets"),
        (lambda t: t["mixture"]["signals"][1].update(name="quality_prose_ref"), "mixture.signals"),
        (lambda t: [s.update(share=0) for s in t["mixture"]["signals"]], "mixture.signals"),
        (lambda t: t["mixture"]["signals"][0].update(tag_weight=-1), "mixture.signals.0.tag_weight"),
        (lambda t: t["mixture"]["stages"][1].update(tokens=0), "mixture.stages.1.tokens"),
        (lambda t: t["mixture"]["stages"][1].update(pl_share=1.5), "mixture.stages.1.pl_share"),
        (lambda t: t["mixture"]["stages"][3].update(min_quality_percentile=-0.1),
         "mixture.stages.3.min_quality_percentile"),
        (lambda t: t["quality_train"]["classifiers"][3].update(name="code"), "quality_train.classifiers"),
        (lambda t: [c.update(kind="domain") for c in t["quality_train"]["classifiers"]], "quality_train.classifiers"),
        (lambda t: t["sample_corpus"].update(code_docs=0, prose_docs=0, math_docs=0, web_docs=0),
         "sample_corpus.web_docs"),
    ],
)
def test_sections_that_must_agree_are_checked_together(change, key):
    tree = _tree()
    change(tree)
    message = _validate_error(tree)
    assert message.startswith(f"config key {key!r}: ") and "(got " in message


def test_every_shipped_profile_loads():
    assert {"tiny", "xgen-small-4b", "xgen-small-9b"} <= set(available_profiles())
    for profile in available_profiles():
        assert len(load_config(profile).mixture.stages) == len(CURRICULUM_PHASES)


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _numeric_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, types.UnionType) and len(args) == 1:
            annotation = args[0]
        if _is_section(annotation):
            yield from _numeric_fields(annotation, f"{prefix}{name}.")
        elif typing.get_origin(annotation) is list and _is_section(typing.get_args(annotation)[0]):
            yield from _numeric_fields(typing.get_args(annotation)[0], f"{prefix}{name}.N.")
        elif annotation in (int, float):
            yield f"{prefix}{name}", field


def test_every_numeric_key_has_a_lower_bound():
    fields = dict(_numeric_fields(XgenConfig))
    assert {"dedup.threshold", "train_run.mesh.data", "mixture.stages.N.tokens", "train_run.max_steps"} <= set(fields)
    lower = (annotated_types.Gt, annotated_types.Ge)
    unbounded = [key for key, field in fields.items() if not any(isinstance(m, lower) for m in field.metadata)]
    assert unbounded == []
