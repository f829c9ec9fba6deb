"""The mixture chooses each cluster's top-k variants where quality is known: among the passing variants, by
quality, then recency, then length."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xgen_core.config import CurriculumStageConfig, load_config

pytestmark = pytest.mark.spark


def variant(cluster, rank, quality, *, passes=True, kept=True, day=1, text=None, length=120):
    text = text or f"{cluster}{rank} " + "lorem ipsum dolor sit amet " * (length // 27)
    return {
        "id": f"{cluster}{rank}", "cluster_id": cluster, "cluster_rank": rank, "kept": kept, "heuristic_pass": passes,
        "quality_prose_ref": quality, "quality_math_ref": quality, "domain_tags": [], "cluster_size": 0, "text": text,
        "source": "web", "crawl_time": datetime(2024, 1, day, tzinfo=timezone.utc), "snapshot": "CC-MAIN-2024-10",
        "content_hash": hashlib.sha1(text.encode()).hexdigest(),
    }  # fmt: skip


def signals_like(rows: list[dict]) -> pa.Table:
    sizes = defaultdict(int)
    for row in rows:
        sizes[row["cluster_id"]] += 1
    rows = [{**row, "cluster_size": sizes[row["cluster_id"]]} for row in rows]
    schema = pa.schema([
        ("id", pa.string()), ("cluster_id", pa.string()), ("cluster_rank", pa.int32()), ("kept", pa.bool_()),
        ("heuristic_pass", pa.bool_()), ("quality_prose_ref", pa.float64()), ("quality_math_ref", pa.float64()),
        ("domain_tags", pa.list_(pa.string())), ("cluster_size", pa.int64()), ("text", pa.string()),
        ("source", pa.string()), ("crawl_time", pa.timestamp("us", tz="UTC")), ("snapshot", pa.string()),
        ("content_hash", pa.string()),
    ])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


def test_each_cluster_contributes_its_top_k_passing_variants_by_quality_recency_length(spark, tmp_path):
    from xgen_core.data.mixture import run_mixture

    copy = "c1 " + "an exact copy crawled twice " * 5
    rows = [
        # dedup kept a1 and a2 (top 2 by language score); both fail a heuristic: a3 and a4 stand in
        variant("a", 1, 0.9, passes=False), variant("a", 2, 0.8, passes=False),
        variant("a", 3, 0.5, kept=False), variant("a", 4, 0.4, kept=False),
        # dedup's rank 1 is the worst by quality
        variant("b", 1, 0.2), variant("b", 2, 0.9), variant("b", 3, 0.7, kept=False),
        # an exact copy counts once (its most recent crawl), so the next distinct text is sampled
        variant("c", 1, 0.6, text=copy, day=1), variant("c", 2, 0.6, text=copy, day=9), variant("c", 3, 0.3, kept=False),
        # equal quality: the most recent two
        variant("f", 1, 0.5, day=1), variant("f", 2, 0.5, day=9), variant("f", 3, 0.5, day=5, kept=False),
        # equal quality and time: the longest two
        variant("g", 1, 0.5, length=60), variant("g", 2, 0.5, length=200), variant("g", 3, 0.5, length=140, kept=False),
        *[variant(f"s{i}", 1, i / 10) for i in range(6)],
    ]  # fmt: skip
    pq.write_table(signals_like(rows), tmp_path / "signals-data.parquet")
    signals = tmp_path / "signals"
    (signals / "data").mkdir(parents=True)
    (tmp_path / "signals-data.parquet").rename(signals / "data" / "part-0.parquet")
    # One curriculum stage over everything (the pipeline's config holds four, one per LR phase).
    one_stage = CurriculumStageConfig(name="all", tokens=200000, pl_share=0.0, min_quality_percentile=0.0)
    cfg = load_config("tiny", ["mixture.top_k_per_cluster=2"]).mixture.model_copy(update={"stages": [one_stage]})
    result = run_mixture(spark, str(signals), str(tmp_path / "mixture"), cfg)
    manifest = pq.read_table(str(tmp_path / "mixture" / "stages" / "all")).to_pylist()
    chosen = defaultdict(set)
    for row in manifest:
        chosen[row["cluster_id"]].add(row["id"])
    assert chosen["a"] == {"a3", "a4"}
    assert chosen["b"] == {"b2", "b3"}
    assert chosen["c"] == {"c2", "c3"}
    assert chosen["f"] == {"f2", "f3"}
    assert chosen["g"] == {"g2", "g3"}
    assert result["counts"]["passing_variants"] == 22 - 3  # a1, a2 fail; c1 is a copy of c2
    assert result["counts"]["eligible_variants"] == 10 + 6
