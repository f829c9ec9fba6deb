"""Top-k variants per cluster, per-signal upsampling merged into one sampling weight, and the curriculum stage
manifests (paper 2.2, 2.4, 2.5).

The k variants of a cluster that are sampled are chosen here, where quality is known (dedup runs before any
classifier and only annotates): among a cluster's passing variants (not quarantined by signals, every heuristic
passed; one per distinct text), the best `mixture.top_k_per_cluster` by the ensemble quality score, then recency
(crawl time, snapshot), then length, ties by id. Dedup's annotations (cluster id, size, longevity, breadth, rank)
travel unchanged; `variant_index` is the mixture's own order.

Sampling works on clusters: a cluster is represented by its best variant, which carries the signals. Every signal
turns into its own repeat weight per cluster (percentile buckets of a classifier score, a domain tag,
natural-frequency buckets of cluster_size), normalised into its own distribution; the distributions are merged with
a configured rule. Each curriculum stage then fills its token budget separately for programming-language (PL) and
natural-language (NL) clusters above its quality threshold, with expected repeats proportional to the merged
weight; a seeded hash turns fractional repeats into whole ones, and a cluster's repeats are dealt round-robin over
its top-k variants, so upsampling reuses alternate variants.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from xgen_core.config import CurriculumStageConfig, MixtureConfig, SignalRuleConfig
from xgen_core.data.sparkio import write_deterministic_parquet
from xgen_core.storage import store_for
from xgen_core.errors import XgenError

MERGE_RULES = ("mixture", "mean", "max")


def with_quality_ensemble(docs: DataFrame) -> DataFrame:
    """The ensemble quality score of every document: the mean of its quality_* classifier scores."""
    qualities = quality_columns(docs)
    if not qualities:
        raise XgenError("mixture needs at least one quality_* score column (run the signals stage first)")
    return docs.withColumn("quality_ensemble", sum((F.col(c) for c in qualities), F.lit(0.0)) / len(qualities))


def variant_order() -> list[Column]:
    """Best first: ensemble quality, then recency (crawl time, snapshot), then length; ties by id."""
    return [
        F.col("quality_ensemble").desc_nulls_last(), F.col("crawl_time").desc_nulls_last(),
        F.col("snapshot").desc_nulls_last(), F.length("text").desc(), F.col("id").asc(),
    ]  # fmt: skip


def passing_variants(docs: DataFrame) -> DataFrame:
    """Heuristic-passing documents (signals already quarantined the rest), one per distinct text of a cluster: an
    exact copy adds no lexical diversity, so only its best copy (the most recent) stays."""
    passing = with_quality_ensemble(docs.filter(F.col("heuristic_pass")))
    text_key = F.col("content_hash") if "content_hash" in docs.columns else F.sha2("text", 256)
    copies = Window.partitionBy("cluster_id", text_key).orderBy(*variant_order())
    return passing.withColumn("_copy", F.row_number().over(copies)).filter("_copy = 1").drop("_copy")


def eligible_variants(passing: DataFrame, top_k: int) -> DataFrame:
    """The top_k passing variants of each cluster, numbered 0.. in variant_order() (best quality first)."""
    order = Window.partitionBy("cluster_id").orderBy(*variant_order())
    ranked = passing.withColumn("variant_index", F.row_number().over(order) - 1)
    return ranked.filter(F.col("variant_index") < top_k).withColumn(
        "n_eligible_variants", F.count("*").over(Window.partitionBy("cluster_id"))
    )


def quality_columns(docs: DataFrame) -> list[str]:
    return sorted(c for c in docs.columns if c.startswith("quality_"))


def representatives(variants: DataFrame, params: MixtureConfig) -> DataFrame:
    """One row per cluster: its best variant's signals (with its ensemble quality score) and a token estimate."""
    return variants.filter("variant_index = 0").withColumn(
        "tokens", F.greatest(F.lit(1), F.ceil(F.length("text") / params.chars_per_token)).cast("long")
    )


def bucket_weight(value: Column, bounds: list[float], weights: list[float]) -> Column:
    """Weight of the first bucket whose upper bound reaches value (the last bucket catches the rest)."""
    expression = F.lit(weights[-1])
    for bound, weight in reversed(list(zip(bounds[:-1], weights[:-1]))):
        expression = F.when(value <= bound, F.lit(weight)).otherwise(expression)
    return expression.cast("double")


def signal_weight(reps: DataFrame, rule: SignalRuleConfig) -> Column:
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


def weighted_clusters(reps: DataFrame, params: MixtureConfig) -> DataFrame:
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


def merged_weight(params: MixtureConfig, n_clusters: int) -> Column:
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


def stage_repeats(clusters: DataFrame, stage: CurriculumStageConfig, params: MixtureConfig) -> DataFrame:
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
    """Deal each cluster's repeats round-robin over its top-k variants, best first."""
    joined = variants.join(clusters.select("cluster_id", "cluster_repeats", "kind"), "cluster_id")
    n = F.col("n_eligible_variants")
    share = F.floor(F.col("cluster_repeats") / n) + (F.col("variant_index") < F.col("cluster_repeats") % n).cast("long")
    return joined.withColumn("repeats", share.cast("long")).filter("repeats > 0")


def run_mixture(
    spark: SparkSession,
    signals_uri: str,
    output_uri: str,
    params: MixtureConfig,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Write output_uri/stages/{stage}/ (Parquet: id, text, repeats, ...) and output_uri/stages/{stage}.json."""
    docs = spark.read.parquet(f"{signals_uri}/data")
    passing = passing_variants(docs).localCheckpoint()
    variants = eligible_variants(passing, params.top_k_per_cluster).localCheckpoint()
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
    counts = {"passing_variants": passing.count(), "eligible_variants": variants.count(), "clusters": clusters.count()}
    counts.update({f"{name}_documents": s["documents"] for name, s in summaries.items()})
    return {"counts": counts, "metrics": {"stages": summaries, "signal_shares": shares}}


def stage_summary(spark, manifest_uri: str, stage: CurriculumStageConfig, repeats: DataFrame, params: MixtureConfig) -> dict:
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


def signal_shares(clusters: DataFrame, params: MixtureConfig, sampled_tokens: bool = False) -> dict:
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


def run(ctx) -> dict:
    """The `mixture` stage: curriculum manifests under stages/, then the data report with its plots under report/."""
    from xgen_core.data import data_report

    result = run_mixture(ctx.spark(), ctx.inputs["signals"], ctx.output, ctx.cfg.mixture, ctx.log)
    data_report.write(ctx.spark(), ctx.inputs["signals"], ctx.output, result)
    return result
