"""Train the quality ensemble and the domain classifiers (paper sections 2.3 and 2.4); models become artifacts.

Each quality classifier learns one high-quality reference source against random raw web documents; each domain
classifier learns one domain (code, math) against everything else. Training sets are bounded, deterministic samples
(ordered by a seeded hash of the id) drawn from the kept documents of the dedup output; only those samples reach
the driver. Held-out accuracy, precision and recall go into the returned metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from xgen_core.data import textclf
from xgen_core.storage import store_for
from xgen_core.errors import XgenError


@dataclass(frozen=True)
class ClassifierSpec:
    name: str
    kind: str  # "quality" | "domain"
    positive_sources: tuple[str, ...]
    negative_sources: tuple[str, ...]  # empty: every source that is not positive


@dataclass(frozen=True)
class QualityTrainParams:
    classifiers: tuple[ClassifierSpec, ...]
    max_docs_per_class: int
    holdout_fraction: float
    settings: textclf.TrainSettings


def from_sources(sources: tuple[str, ...]) -> Column:
    """Rows whose source is one of `sources` or a sub-source of one ("code" matches "code-stdlib")."""
    condition = F.lit(False)
    for source in sources:
        condition = condition | (F.col("source") == source) | F.col("source").startswith(f"{source}-")
    return condition


def bounded_sample(docs: DataFrame, limit: int, seed: int) -> list[str]:
    """Up to `limit` texts, the same ones for the same data and seed (ordered by a seeded hash of the id)."""
    ordered = docs.select(F.xxhash64("id", F.lit(seed)).alias("order"), "id", "text").orderBy("order", "id")
    return [row.text for row in ordered.limit(limit).collect()]


def training_set(docs: DataFrame, spec: ClassifierSpec, params: QualityTrainParams) -> tuple[list[str], list[str]]:
    positives = docs.filter(from_sources(spec.positive_sources))
    negatives = docs.filter(
        from_sources(spec.negative_sources) if spec.negative_sources else ~from_sources(spec.positive_sources)
    )
    seed = params.settings.seed
    positive_texts = bounded_sample(positives, params.max_docs_per_class, seed)
    negative_texts = bounded_sample(negatives, params.max_docs_per_class, seed + 1)
    if not positive_texts or not negative_texts:
        raise XgenError(
            f"classifier {spec.name!r}: no training documents for "
            f"{'positive' if not positive_texts else 'negative'} sources "
            f"{spec.positive_sources if not positive_texts else spec.negative_sources or 'other than positives'}"
        )
    return positive_texts, negative_texts


def split_holdout(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    n_holdout = int(len(texts) * fraction)
    return texts[n_holdout:], texts[:n_holdout]


def train_classifier(docs: DataFrame, spec: ClassifierSpec, params: QualityTrainParams) -> tuple[bytes, dict]:
    positive_texts, negative_texts = training_set(docs, spec, params)
    train_pos, test_pos = split_holdout(positive_texts, params.holdout_fraction)
    train_neg, test_neg = split_holdout(negative_texts, params.holdout_fraction)
    model = textclf.train(train_pos + train_neg, [1] * len(train_pos) + [0] * len(train_neg), params.settings)
    metrics = textclf.evaluate(model, test_pos + test_neg, [1] * len(test_pos) + [0] * len(test_neg))
    metrics.update(n_train_positive=len(train_pos), n_train_negative=len(train_neg))
    return model.to_bytes(), metrics


def run_quality_train(
    spark: SparkSession,
    dedup_uri: str,
    output_uri: str,
    params: QualityTrainParams,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Write output_uri/models/{name}.npz per classifier and output_uri/classifiers.json; return counts/metrics."""
    docs = spark.read.parquet(f"{dedup_uri}/data").filter("kept")
    if "source" not in docs.columns:
        raise XgenError("quality_train needs a `source` column naming each document's sub-source")
    index, metrics = [], {}
    for spec in params.classifiers:
        model_bytes, spec_metrics = train_classifier(docs, spec, params)
        write_file(f"{output_uri}/models/{spec.name}.npz", model_bytes)
        index.append({"name": spec.name, "kind": spec.kind, "model": f"models/{spec.name}.npz"})
        metrics[spec.name] = spec_metrics
        log(f"quality_train: {spec.name} ({spec.kind}) held-out {json.dumps(spec_metrics)}")
    write_file(f"{output_uri}/classifiers.json", json.dumps(index, indent=2).encode())
    return {"counts": {"classifiers": len(index)}, "metrics": metrics}


def write_file(uri: str, data: bytes) -> None:
    store_for(uri).write_bytes(uri, data)


def params_from_config(cfg) -> QualityTrainParams:
    c = cfg.quality_train
    specs = tuple(
        ClassifierSpec(x.name, x.kind, tuple(x.positive_sources), tuple(x.negative_sources)) for x in c.classifiers
    )
    settings = textclf.TrainSettings(c.dim, c.buckets, c.epochs, c.learning_rate, c.seed)
    return QualityTrainParams(specs, c.max_docs_per_class, c.holdout_fraction, settings)


def run(ctx) -> dict:
    """The `quality_train` stage: one model per configured classifier under models/."""
    return run_quality_train(ctx.spark(), ctx.inputs["dedup"], ctx.output, params_from_config(ctx.cfg), ctx.log)
