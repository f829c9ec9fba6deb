"""Cluster statistics and ranks hold no cluster in one place: a page copied 100,000 times is one ordinary cluster."""

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.data.test_dedup import PARAMS
from xgen_core.data.dedup import run_dedup
from xgen_core.data.dedup import clusters
from xgen_core.data.dedup.clusters import cluster_metadata, rows_by_cluster
from xgen_core.data.dedup.documents import content_hash, content_node

pytestmark = pytest.mark.spark

COPIES = 100_000
SNAPSHOTS = ["CC-MAIN-2024-10", "CC-MAIN-2024-18", "CC-MAIN-2024-22", "CC-MAIN-2024-26"]


def test_a_cluster_of_100000_exact_copies_is_annotated_in_full(spark, tmp_path):
    page = "this page was copied to every corner of the web and crawled again and again"
    other = "a different page with its own words that share nothing with the copied one at all"
    n = COPIES + 1
    table = pa.table(
        {
            "id": [f"copy-{i:06d}" for i in range(COPIES)] + ["other"],
            "text": [page] * COPIES + [other],
            "url": [f"https://site{i % 1000}.example/{i}" for i in range(n)],
            "snapshot": [SNAPSHOTS[i % len(SNAPSHOTS)] for i in range(n)],
            "quality": [float(i % 7) for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "copies.parquet")
    counts = run_dedup(spark, str(tmp_path / "copies.parquet"), str(tmp_path / "out"), PARAMS.model_copy(update={"rows_per_chunk": 25_000}))
    out = pq.read_table(tmp_path / "out" / "data", columns=["id", "cluster_id", "cluster_size", "n_exact", "n_variants", "n_snapshots", "n_domains", "kept", "cluster_rank"])
    assert counts["documents"] == n and out.num_rows == n
    copies = out.filter(pc.starts_with(out.column("id"), "copy-"))
    for column, expected in [("cluster_id", f"{content_node(content_hash(page)):015x}"), ("cluster_size", COPIES), ("n_exact", COPIES), ("n_variants", 1), ("n_snapshots", len(SNAPSHOTS)), ("n_domains", 1000)]:
        assert pc.unique(copies.column(column)).to_pylist() == [expected], column
    assert sorted(copies.column("cluster_rank").to_pylist()) == list(range(1, COPIES + 1))
    kept = copies.filter(copies.column("kept")).to_pylist()
    # The best copy by quality (6.0: i % 7 == 6), then by the latest snapshot (i % 4 == 3): copy-000027.
    assert [(row["id"], row["cluster_rank"]) for row in kept] == [("copy-000027", 1)]
    single = out.filter(pc.equal(out.column("id"), "other")).to_pylist()[0]
    assert (single["cluster_size"], single["kept"], single["cluster_rank"]) == (1, True, 1)


@pytest.mark.parametrize("roots_bound, join", [(8_000_000, "BroadcastHashJoin"), (0, "SortMergeJoin")])
def test_cluster_step_runs_in_spark_operators_that_spill_not_in_python(spark, monkeypatch, roots_bound, join):
    """A Python batch per partition (or a collected list per cluster) would hold the largest cluster in memory.

    Roots at most the bound are broadcast; above it (paper scale) the join sorts and merges: the same annotations."""
    monkeypatch.setattr(clusters, "BROADCAST_ROOTS_MAX_ROWS", roots_bound)
    when = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    slim = spark.createDataFrame(
        [(0, row, f"d{row}", 7 if row < 3 else 9, "S1", "a.example", when, 0.5, 10) for row in range(5)],
        "chunk int, row int, id string, node long, snapshot string, domain string, crawl_time timestamp, "
        "quality double, length int",
    )
    roots = spark.createDataFrame([(9, 7)], "node long, root long")
    annotations = cluster_metadata(rows_by_cluster(slim, roots), PARAMS)
    plan = annotations._jdf.queryExecution().executedPlan().toString()
    assert "MapInArrow" not in plan and "ArrowEvalPython" not in plan and "collect_" not in plan.lower()
    assert join in plan
    rows = sorted(annotations.collect(), key=lambda row: row.row)
    assert [(row.cluster_id, row.cluster_size, row.n_variants, row.n_exact) for row in rows] == [("000000000000007", 5, 2, 3)] * 3 + [("000000000000007", 5, 2, 2)] * 2
    assert [row.cluster_rank for row in rows] == [1, 3, 4, 2, 5] and [row.kept for row in rows] == [True, False, False, True, False]
