"""Per-signal upsampling merged into one sampling weight, and the curriculum stage manifests (paper 2.4, 2.5).

Sampling works on clusters: a cluster is represented by its best kept, heuristic-passing variant (smallest
cluster_rank), which carries the signals. Every signal turns into its own repeat weight per cluster (percentile
buckets of a classifier score, a domain tag, natural-frequency buckets of cluster_size), normalised into its own
distribution; the distributions are merged with a configured rule. Each curriculum stage then fills its token
budget separately for programming-language (PL) and natural-language (NL) clusters above its quality threshold,
with expected repeats proportional to the merged weight; a seeded hash turns fractional repeats into whole ones,
and a cluster's repeats are dealt round-robin over its kept variants, so upsampling reuses alternate variants.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xgen_core.data.sparkio import write_deterministic_parquet
from xgen_core.storage import store_for
from xgen_core.errors import XgenError

MERGE_RULES = ("mixture", "mean", "max")


@dataclass(frozen=True)
class SignalRule:
    name: str
    kind: str  # "percentile" (of a score column) | "tag" (in domain_tags) | "buckets" (of a numeric column)
    column: str  # score column, tag name or numeric column
    buckets: tuple[tuple[float, float], ...]  # (upper bound, weight), ascending; percentile bounds in [0, 1]
    tag_weight: float
    share: float  # weight of this signal's distribution in the "mixture" merge


@dataclass(frozen=True)
class CurriculumStage:
    name: str
    tokens: int
    pl_share: float
    min_quality_percentile: float


@dataclass(frozen=True)
class MixtureParams:
    signals: tuple[SignalRule, ...]
    merge: str
    stages: tuple[CurriculumStage, ...]
    pl_tag: str
    chars_per_token: float
    seed: int
    output_files: int


def eligible_variants(docs: DataFrame) -> DataFrame:
    """Kept, heuristic-passing variants, numbered 0.. within their cluster in cluster_rank order."""
    passing = docs.filter(F.col("kept") & F.col("heuristic_pass"))
    order = Window.partitionBy("cluster_id").orderBy("cluster_rank")
    return passing.withColumn("variant_index", F.row_number().over(order) - 1).withColumn(
        "n_eligible_variants", F.count("*").over(Window.partitionBy("cluster_id"))
    )


def quality_columns(docs: DataFrame) -> list[str]:
    return sorted(c for c in docs.columns if c.startswith("quality_"))


def representatives(variants: DataFrame, params: MixtureParams) -> DataFrame:
    """One row per cluster: its best variant's signals, an ensemble quality score and a token estimate."""
    reps = variants.filter("variant_index = 0")
    qualities = quality_columns(variants)
    if not qualities:
        raise XgenError("mixture needs at least one quality_* score column (run the signals stage first)")
    ensemble = sum((F.col(c) for c in qualities), F.lit(0.0)) / len(qualities)
    return reps.withColumn("quality_ensemble", ensemble).withColumn(
        "tokens", F.greatest(F.lit(1), F.ceil(F.length("text") / params.chars_per_token)).cast("long")
    )


def bucket_weight(value: Column, bounds: list[float], weights: list[float]) -> Column:
    """Weight of the first bucket whose upper bound reaches value (the last bucket catches the rest)."""
    expression = F.lit(weights[-1])
    for bound, weight in reversed(list(zip(bounds[:-1], weights[:-1]))):
        expression = F.when(value <= bound, F.lit(weight)).otherwise(expression)
    return expression.cast("double")


def signal_weight(reps: DataFrame, rule: SignalRule) -> Column:
    if rule.kind == "tag":
        return F.when(F.array_contains("domain_tags", rule.column), F.lit(rule.tag_weight)).otherwise(F.lit(1.0))
    bounds = [bound for bound, _ in rule.buckets]
    weights = [weight for _, weight in rule.buckets]
    if rule.kind == "buckets":
        return bucket_weight(F.col(rule.column), bounds, weights)
    if rule.kind == "percentile":
        # Percentile bounds become score values; the relative error 0 makes them exact (and deterministic).
        values = reps.approxQuantile(rule.column, [min(b, 1.0) for b in bounds], 0.0)
        return bucket_weight(F.col(rule.column), values, weights)
    raise XgenError(f"mixture signal {rule.name!r}: unknown kind {rule.kind!r} (percentile, tag, buckets)")


def weighted_clusters(reps: DataFrame, params: MixtureParams) -> DataFrame:
    """Per cluster: w_<signal> for every signal, p_<signal> its normalised distribution, and the merged weight."""
    if params.merge not in MERGE_RULES:
        raise XgenError(f"mixture.merge must be one of {MERGE_RULES}, got {params.merge!r}")
    weighted = reps
    for rule in params.signals:
        weighted = weighted.withColumn(f"w_{rule.name}", signal_weight(reps, rule))
    totals = weighted.agg(*[F.sum(f"w_{r.name}").alias(r.name) for r in params.signals]).first().asDict()
    n_clusters = weighted.count()
    for rule in params.signals:
        weighted = weighted.withColumn(f"p_{rule.name}", F.col(f"w_{rule.name}") / F.lit(totals[rule.name]))
    return weighted.withColumn("weight", merged_weight(params, n_clusters))


def merged_weight(params: MixtureParams, n_clusters: int) -> Column:
    """The merged distribution scaled by the cluster count, so that a weight of 1 means 'sampled at par'."""
    if params.merge == "mixture":
        total_share = sum(rule.share for rule in params.signals)
        merged = sum((F.col(f"p_{r.name}") * (r.share / total_share) for r in params.signals), F.lit(0.0))
        return merged * F.lit(float(n_clusters))
    raw = [F.col(f"w_{r.name}") for r in params.signals]
    return F.greatest(*raw) if params.merge == "max" and len(raw) > 1 else sum(raw, F.lit(0.0)) / len(raw)


def uniform_hash(seed: int, salt: str, key: str) -> Column:
    """A deterministic uniform number in [0, 1) per key: the same for the same seed wherever it is computed."""
    mantissa = F.xxhash64(F.lit(seed), F.lit(salt), F.col(key)).bitwiseAND(F.lit((1 << 53) - 1))
    return mantissa.cast("double") / F.lit(float(1 << 53))


def stage_repeats(clusters: DataFrame, stage: CurriculumStage, params: MixtureParams) -> DataFrame:
    """Clusters with their whole number of repeats for one curriculum stage (PL and NL budgets filled apart)."""
    threshold = clusters.approxQuantile("quality_ensemble", [stage.min_quality_percentile], 0.0)[0]
    eligible = clusters.filter(F.col("quality_ensemble") >= threshold).withColumn(
        "kind", F.when(F.array_contains("domain_tags", params.pl_tag), F.lit("pl")).otherwise(F.lit("nl"))
    )
    mass = {r.kind: r.mass for r in eligible.groupBy("kind").agg(F.sum(F.col("weight") * F.col("tokens")).alias("mass")).collect()}
    budget = {"pl": stage.tokens * stage.pl_share, "nl": stage.tokens * (1.0 - stage.pl_share)}
    scale = F.lit(0.0)
    for kind, kind_mass in mass.items():
        if kind_mass:
            scale = F.when(F.col("kind") == kind, F.lit(budget[kind] / kind_mass)).otherwise(scale)
    expected = F.col("weight") * scale
    whole = F.floor(expected) + (uniform_hash(params.seed, stage.name, "cluster_id") < expected - F.floor(expected)).cast("long")
    return eligible.withColumn("expected_repeats", expected).withColumn("cluster_repeats", whole.cast("long"))


def variant_repeats(variants: DataFrame, clusters: DataFrame) -> DataFrame:
    """Deal each cluster's repeats round-robin over its kept variants, best first."""
    joined = variants.join(clusters.select("cluster_id", "cluster_repeats", "kind"), "cluster_id")
    n = F.col("n_eligible_variants")
    share = F.floor(F.col("cluster_repeats") / n) + (F.col("variant_index") < F.col("cluster_repeats") % n).cast("long")
    return joined.withColumn("repeats", share.cast("long")).filter("repeats > 0")


def run_mixture(
    spark: SparkSession,
    signals_uri: str,
    output_uri: str,
    params: MixtureParams,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Write output_uri/stages/{stage}/ (Parquet: id, text, repeats, ...) and output_uri/stages/{stage}.json."""
    docs = spark.read.parquet(f"{signals_uri}/data")
    variants = eligible_variants(docs).localCheckpoint()
    clusters = weighted_clusters(representatives(variants, params), params).localCheckpoint()
    summaries = {}
    for stage in params.stages:
        repeats = stage_repeats(clusters, stage, params).localCheckpoint()
        rows = variant_repeats(variants, repeats).withColumn(
            "tokens", F.greatest(F.lit(1), F.ceil(F.length("text") / params.chars_per_token)).cast("long")
        )
        manifest_rows = rows.select("id", "cluster_id", "repeats", "tokens", "kind", "source", "text")
        write_deterministic_parquet(manifest_rows, f"{output_uri}/stages/{stage.name}", params.output_files, ["id"])
        summary = stage_summary(spark, f"{output_uri}/stages/{stage.name}", stage, repeats, params)
        if not summary["documents"]:
            raise XgenError(
                f"curriculum stage {stage.name!r} selected no documents (budget {stage.tokens:,} tokens, "
                f"min_quality_percentile {stage.min_quality_percentile}, pl_share {stage.pl_share}): raise its "
                "tokens or lower its quality threshold in mixture.stages"
            )
        write_file(f"{output_uri}/stages/{stage.name}.json", json.dumps(summary, indent=2).encode())
        summaries[stage.name] = summary
        log(f"mixture: {stage.name}: {summary['tokens']:,} tokens, pl share {summary['pl_share']:.2f}")
    shares = signal_shares(clusters, params)
    write_file(f"{output_uri}/signal_shares.json", json.dumps(shares, indent=2).encode())
    counts = {"eligible_variants": variants.count(), "clusters": clusters.count()}
    counts.update({f"{name}_documents": s["documents"] for name, s in summaries.items()})
    return {"counts": counts, "metrics": {"stages": summaries, "signal_shares": shares}}


def stage_summary(spark, manifest_uri: str, stage: CurriculumStage, repeats: DataFrame, params: MixtureParams) -> dict:
    rows = spark.read.parquet(manifest_uri)
    by_kind = {
        r.kind: (int(r.docs), int(r.repeats), int(r.tokens))
        for r in rows.groupBy("kind")
        .agg(F.count("*").alias("docs"), F.sum("repeats").alias("repeats"), F.sum(F.col("repeats") * F.col("tokens")).alias("tokens"))
        .collect()
    }
    by_source = {
        r.source: int(r.tokens)
        for r in rows.groupBy("source").agg(F.sum(F.col("repeats") * F.col("tokens")).alias("tokens")).collect()
    }
    tokens = sum(t for _, _, t in by_kind.values())
    return {
        "stage": stage.name,
        "token_budget": stage.tokens,
        "tokens": tokens,
        "pl_share_target": stage.pl_share,
        "pl_share": by_kind.get("pl", (0, 0, 0))[2] / tokens if tokens else 0.0,
        "min_quality_percentile": stage.min_quality_percentile,
        "documents": sum(d for d, _, _ in by_kind.values()),
        "samples": sum(r for _, r, _ in by_kind.values()),
        "clusters": repeats.filter("cluster_repeats > 0").count(),
        "tokens_by_source": dict(sorted(by_source.items(), key=lambda kv: str(kv[0]))),
        "signal_shares": signal_shares(repeats, params, sampled_tokens=True),
        "seed": params.seed,
        "manifest": f"stages/{stage.name}",
    }


def signal_shares(clusters: DataFrame, params: MixtureParams, sampled_tokens: bool = False) -> dict:
    """Each signal's share of the merged sampling mass: its part of every cluster's merged weight, summed over the
    clusters by merged weight, or (sampled_tokens) by the tokens a curriculum stage actually draws from them."""
    if params.merge == "mixture":
        total_share = sum(rule.share for rule in params.signals)
        parts = {r.name: F.col(f"p_{r.name}") * (r.share / total_share) for r in params.signals}
    else:
        parts = {r.name: F.col(f"w_{r.name}") for r in params.signals}
    total = sum(parts.values(), F.lit(0.0))
    mass = F.col("cluster_repeats") * F.col("tokens") if sampled_tokens else F.col("weight")
    sums = clusters.agg(*[F.sum(part / total * mass).alias(name) for name, part in parts.items()]).first()
    grand = sum(v or 0.0 for v in sums) or 1.0
    return {name: (sums[name] or 0.0) / grand for name in parts}


def write_file(uri: str, data: bytes) -> None:
    store_for(uri).write_bytes(uri, data)


def params_from_config(cfg) -> MixtureParams:
    c = cfg.mixture
    signals = tuple(
        SignalRule(s.name, s.kind, s.column, tuple(tuple(b) for b in s.buckets), s.tag_weight, s.share) for s in c.signals
    )
    stages = tuple(CurriculumStage(s.name, s.tokens, s.pl_share, s.min_quality_percentile) for s in c.stages)
    return MixtureParams(signals, c.merge, stages, c.pl_tag, c.chars_per_token, c.seed, c.output_files)


def run(ctx) -> dict:
    """The `mixture` stage: curriculum manifests under stages/, then the data report with its plots under report/."""
    from xgen_core.data import data_report

    result = run_mixture(ctx.spark(), ctx.inputs["signals"], ctx.output, params_from_config(ctx.cfg), ctx.log)
    data_report.write(ctx.spark(), ctx.inputs["signals"], ctx.output, result)
    return result
