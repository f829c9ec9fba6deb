"""Train the quality ensemble and the domain classifiers (paper sections 2.3 and 2.4) with fastText; the models
become artifacts.

Each quality classifier learns one high-quality reference source against random raw web documents; each domain
classifier learns one domain (code, math) against everything else. Positives come from the ingested documents of
the classifier's `positive_sources` and from its `quality_train.reference_inputs` (reference dumps read through the
ingest readers); negatives from the ingested documents of its `negative_sources`. Training sets are bounded,
deterministic samples (ordered by a seeded hash of the id); only those samples reach the driver, where
`fasttext.train_supervised` trains. Held-out accuracy, precision and recall go into the manifest's metrics.

A classifier entry that names a `model` uses that fastText file as it is: it is checked (its labels) and recorded
with its SHA-256, and later stages read it from its URI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from xgen_core.config import ClassifierConfig, QualityTrainConfig
from xgen_core.data import textclf
from xgen_core.data.normalize import normalize_text
from xgen_core.data.readers import BadRecord, is_data_file, read_file
from xgen_core.errors import XgenError
from xgen_core.storage import iter_files, normalize_uri, store_for

INDEX_FILE = "classifiers.json"


def from_sources(sources: list[str]) -> Column:
    """Rows whose source is one of `sources` or a sub-source of one ("code" matches "code-stdlib")."""
    condition = F.lit(False)
    for source in sources:
        condition = condition | (F.col("source") == source) | F.col("source").startswith(f"{source}-")
    return condition


def bounded_sample(docs: DataFrame, limit: int, seed: int) -> list[str]:
    """Up to `limit` texts, the same ones for the same data and seed (ordered by a seeded hash of the id)."""
    ordered = docs.select(F.xxhash64("id", F.lit(seed)).alias("order"), "id", "text").orderBy("order", "id")
    return [row.text for row in ordered.limit(limit).collect()]


def reference_rows(uri: str) -> Iterator[tuple]:
    """Runs on an executor: (id, text, reason) per record of one reference file; reason None for a document."""
    for record in read_file(uri):
        if isinstance(record, BadRecord):
            yield None, None, record.reason
            continue
        text = normalize_text(record.text)
        yield f"{uri}#{record.ordinal}", text, None if text else "empty_text"


def reference_documents(spark: SparkSession, uris: list[str]) -> tuple[DataFrame, dict[str, int]]:
    """(id, text) of every readable reference document under uris, and the count of records left out per reason."""
    files = [info.uri for info in iter_files([normalize_uri(u) for u in uris]) if is_data_file(info.uri)]
    if not files:
        raise XgenError(f"quality_train.reference_inputs {uris}: no files found")
    rows = spark.sparkContext.parallelize(files, len(files)).flatMap(reference_rows)
    docs = spark.createDataFrame(rows, "id string, text string, reason string").localCheckpoint()
    left_out = {r.reason: r["count"] for r in docs.filter("reason IS NOT NULL").groupBy("reason").count().collect()}
    return docs.filter("reason IS NULL").select("id", "text"), left_out


def training_set(
    spark: SparkSession, docs: DataFrame, spec: ClassifierConfig, config: QualityTrainConfig
) -> tuple[list[str], list[str], dict]:
    """Positive and negative texts for one classifier, with where they came from."""
    positives = docs.filter(from_sources(spec.positive_sources)).select("id", "text")
    counts: dict = {}
    references = config.reference_inputs.get(spec.name, [])
    if references:
        reference_docs, left_out = reference_documents(spark, references)
        counts.update({f"reference_left_out_{reason}": n for reason, n in sorted(left_out.items())})
        positives = positives.unionByName(reference_docs)
    negatives = docs.filter(
        from_sources(spec.negative_sources) if spec.negative_sources else ~from_sources(spec.positive_sources)
    )
    positive_texts = bounded_sample(positives, config.max_docs_per_class, config.seed)
    negative_texts = bounded_sample(negatives, config.max_docs_per_class, config.seed + 1)
    if not positive_texts:
        raise XgenError(
            f"classifier {spec.name!r}: no positive training documents (no ingested document has a source in "
            f"{spec.positive_sources} and quality_train.reference_inputs.{spec.name} = {references} holds none): "
            f"set quality_train.reference_inputs.{spec.name} to reference documents"
        )
    if not negative_texts:
        raise XgenError(
            f"classifier {spec.name!r}: no negative training documents (sources "
            f"{spec.negative_sources or 'other than ' + str(spec.positive_sources)}): set its negative_sources"
        )
    return positive_texts, negative_texts, counts


def split_holdout(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    n_holdout = int(len(texts) * fraction)
    return texts[n_holdout:], texts[:n_holdout]


def train_classifier(
    spark: SparkSession, docs: DataFrame, spec: ClassifierConfig, config: QualityTrainConfig, model_uri: str
) -> tuple[str, dict]:
    """Train, evaluate on the held-out share and write model_uri; returns (SHA-256, metrics)."""
    positive_texts, negative_texts, counts = training_set(spark, docs, spec, config)
    train_pos, test_pos = split_holdout(positive_texts, config.holdout_fraction)
    train_neg, test_neg = split_holdout(negative_texts, config.holdout_fraction)
    started = time.perf_counter()
    model = textclf.train(train_pos, train_neg, config.fasttext, spec.positive_label, config.seed)
    train_seconds = time.perf_counter() - started
    metrics = textclf.evaluate(model, test_pos, test_neg, spec.positive_label)
    metrics.update(counts, n_train_positive=len(train_pos), n_train_negative=len(train_neg))
    metrics.update(train_seconds=round(train_seconds, 3), trained=True)
    return textclf.save(model, model_uri), metrics


def provided_classifier(spec: ClassifierConfig) -> tuple[str, dict]:
    """A model used as it is: its labels checked on the driver, its bytes pinned by their SHA-256."""
    import fasttext

    sha256 = textclf.file_digest(normalize_uri(spec.model))
    model = fasttext.load_model(str(textclf.local_model_file(spec.model, sha256)))
    textclf.check_labels(model, spec.positive_label, f"classifier {spec.name!r} ({spec.model})")
    return sha256, {"trained": False, "model": spec.model}


def run_quality_train(
    spark: SparkSession,
    dedup_uri: str,
    output_uri: str,
    config: QualityTrainConfig,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Write output_uri/models/{name}.bin per trained classifier and output_uri/classifiers.json (every classifier:
    its model URI, SHA-256 and positive label); return counts and per-classifier metrics."""
    # One document per dedup cluster: near-duplicate variants of one cluster would otherwise sit on both sides of
    # the held-out split and flatter the held-out metrics.
    docs = spark.read.parquet(f"{dedup_uri}/data").filter("cluster_rank = 1")
    if "source" not in docs.columns:
        raise XgenError("quality_train needs a `source` column naming each document's sub-source")
    index, metrics = [], {}
    for spec in config.classifiers:
        if spec.model:
            model, (sha256, spec_metrics) = normalize_uri(spec.model), provided_classifier(spec)
        else:
            model = f"models/{spec.name}.bin"
            sha256, spec_metrics = train_classifier(spark, docs, spec, config, f"{output_uri}/{model}")
        index.append({"name": spec.name, "kind": spec.kind, "model": model, "sha256": sha256,
                      "positive_label": spec.positive_label})  # fmt: skip
        metrics[spec.name] = {"kind": spec.kind, **spec_metrics}
        log(f"quality_train: {spec.name} ({spec.kind}) {json.dumps(spec_metrics)}")
    write_file(f"{output_uri}/{INDEX_FILE}", json.dumps(index, indent=2).encode())
    counts = {"classifiers": len(index), "trained": sum(1 for m in metrics.values() if m["trained"])}
    return {"counts": counts, "metrics": metrics}


def model_refs(models_uri: str) -> list[textclf.ModelRef]:
    """The classifiers of a quality_train artifact; a relative model path lies inside the artifact."""
    index = json.loads(store_for(f"{models_uri}/{INDEX_FILE}").read_bytes(f"{models_uri}/{INDEX_FILE}"))
    return [
        textclf.ModelRef(e["name"], e["kind"], e["model"] if "://" in e["model"] or e["model"].startswith("/")
                         else f"{models_uri}/{e['model']}", e["sha256"], e["positive_label"])
        for e in index
    ]  # fmt: skip


def write_file(uri: str, data: bytes) -> None:
    store_for(uri).write_bytes(uri, data)


def run(ctx) -> dict:
    """The `quality_train` stage: one fastText model per configured classifier under models/ (or the named one)."""
    return run_quality_train(ctx.spark(), ctx.inputs["dedup"], ctx.output, ctx.cfg.quality_train, ctx.log)
