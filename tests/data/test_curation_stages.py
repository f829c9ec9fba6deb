"""ingest -> dedup -> quality_train -> signals -> mixture through the stage table on a small sample corpus, with
a contaminated and a foreign-language document slipped into the crawl."""

from __future__ import annotations

import filecmp
import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from xgen_core import artifacts
from xgen_core.cli import main as cli_main
from xgen_core.data.decontam import eval_texts
from xgen_core.data.mixture import run_mixture
from xgen_core.data.neardup_set import generate
from xgen_core.errors import XgenError
from xgen_core.report import write_report
from xgen_core.stages import run_stage

pytestmark = pytest.mark.spark

CORPUS = ["sample_corpus.code_docs=60", "sample_corpus.prose_docs=70", "sample_corpus.math_docs=60", "sample_corpus.web_docs=40"]
BUDGETS = [
    "mixture.stages=[{name: s1, tokens: 40000, pl_share: 0.6, min_quality_percentile: 0.0},"
    " {name: s2, tokens: 40000, pl_share: 0.35, min_quality_percentile: 0.0},"
    " {name: s3, tokens: 20000, pl_share: 0.3, min_quality_percentile: 0.4},"
    " {name: s4, tokens: 8000, pl_share: 0.25, min_quality_percentile: 0.75}]"
]


def injected_docs() -> list[dict]:
    prompt = eval_texts(["humaneval"])["humaneval"][0]
    base = {"snapshot": "CC-MAIN-2024-42", "crawl_time": "2024-10-10T00:00:00Z", "source": "web"}
    return [
        {**base, "id": "leak-1", "url": "https://leaks.example/he", "text": "Solutions to coding puzzles.\n\n" + prompt + "\n    return out\n"},
        {**base, "id": "foreign-1", "url": "https://beispiel.example/", "source": "prose",
         "text": "Der schnelle braune Fuchs springt über den faulen Hund. Die Katze schläft den ganzen Tag im Garten, "
                 "während die Kinder in der Schule sind und die Eltern arbeiten. Am Abend essen alle zusammen."},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, spark):
    from xgen_core.config import load_config

    tmp = tmp_path_factory.mktemp("curation")
    root = tmp / "artifacts"
    corpus_cfg = load_config("tiny", [f"root={root}", *CORPUS])
    corpus = run_stage(corpus_cfg, "sample_corpus", "test-run")
    extra = tmp / "extra.jsonl"
    extra.write_text("".join(json.dumps(d) + "\n" for d in injected_docs()))
    inputs = f"ingest.inputs=[{corpus.uri}/jsonl, {corpus.uri}/wet, {extra}]"
    cfg = load_config("tiny", [f"root={root}", *CORPUS, inputs, *BUDGETS])
    outcomes = {name: run_stage(cfg, name, "test-run") for name in ("ingest", "dedup", "quality_train", "signals", "mixture")}
    return cfg, outcomes, tmp


def rows(uri: str, folder: str) -> list[dict]:
    return pq.read_table(str(Path(uri) / folder), partitioning=None).to_pylist()  # ingest: snapshot= folders


def test_dedup_annotates_every_ingested_document(pipeline):
    _, outcomes, _ = pipeline
    ingested = {r["doc_id"] for r in rows(outcomes["ingest"].uri, "data")}
    deduped = rows(outcomes["dedup"].uri, "data")
    assert {r["id"] for r in deduped} == ingested
    assert any(r["cluster_size"] > 1 for r in deduped)  # the sample corpus plants near-duplicates
    by_cluster = defaultdict(list)
    for r in deduped:
        by_cluster[r["cluster_id"]].append(r)
    for members in by_cluster.values():
        assert all(m["cluster_size"] == len(members) for m in members)
        assert all(m["n_snapshots"] == len({x["snapshot"] for x in members}) for m in members)
        assert all(m["n_domains"] == len({x["domain"] for x in members}) for m in members)


def test_quality_and_domain_classifiers_are_fasttext_artifacts_that_learn(pipeline):
    import fasttext

    _, outcomes, _ = pipeline
    manifest = artifacts.read_manifest(outcomes["quality_train"].uri)
    for name in ("prose_ref", "math_ref", "code", "math"):
        model = fasttext.load_model(str(Path(outcomes["quality_train"].uri) / "models" / f"{name}.bin"))
        assert "__label__positive" in model.labels
        metrics = manifest["metrics"][name]
        assert metrics["accuracy"] >= 0.8 and metrics["precision"] >= 0.7 and metrics["recall"] >= 0.7, (name, metrics)


def test_signals_score_tag_flag_and_quarantine(pipeline):
    _, outcomes, _ = pipeline
    data = rows(outcomes["signals"].uri, "data")
    quarantine = {r["source_id"]: r["quarantine_reason"] for r in rows(outcomes["signals"].uri, "quarantine")}
    assert quarantine["leak-1"] == "contaminated_humaneval"
    assert quarantine["foreign-1"] == "wrong_language"
    assert {"quality_prose_ref", "quality_math_ref", "domain_code", "domain_math", "h_words", "heuristic_pass"} <= set(data[0])
    code = [r for r in data if r["source"] == "code"]
    assert sum("code" in r["domain_tags"] for r in code) >= 0.8 * len(code)
    failed = [r for r in data if not r["heuristic_pass"]]
    assert failed and all(r["heuristic_failed_rule"] for r in failed)
    counts = artifacts.read_manifest(outcomes["signals"].uri)["counts"]
    assert counts["documents_in"] == counts["documents_out"] + sum(v for k, v in counts.items() if k.startswith("quarantined_"))


def test_curriculum_manifests_follow_budgets_and_reuse_variants(pipeline):
    cfg, outcomes, _ = pipeline
    uri = Path(outcomes["mixture"].uri)
    signals = {r["id"]: r for r in rows(outcomes["signals"].uri, "data")}
    for stage in cfg.mixture.stages:
        summary = json.loads((uri / "stages" / f"{stage.name}.json").read_text())
        assert abs(summary["tokens"] - stage.tokens) <= 0.25 * stage.tokens, summary
        manifest = rows(str(uri), f"stages/{stage.name}")
        assert all(signals[r["id"]]["heuristic_pass"] for r in manifest)
        ids_by_cluster = defaultdict(set)
        for r in manifest:
            ids_by_cluster[r["cluster_id"]].add(r["id"])
        assert max(len(ids) for ids in ids_by_cluster.values()) <= cfg.mixture.top_k_per_cluster
    spread = False
    for stage in cfg.mixture.stages:
        by_cluster = defaultdict(list)
        for r in rows(str(uri), f"stages/{stage.name}"):
            by_cluster[r["cluster_id"]].append(r["repeats"])
        # A cluster's repeats are dealt round-robin over its top-k variants: counts differ by at most one.
        assert all(max(counts) - min(counts) <= 1 for counts in by_cluster.values())
        spread |= any(len(counts) > 1 for counts in by_cluster.values())
    assert spread  # some cluster's repeats were drawn from more than one variant


def test_mixture_is_deterministic_per_seed(pipeline, spark):
    cfg, outcomes, tmp = pipeline
    params = cfg.mixture
    again = tmp / "mixture-again"
    run_mixture(spark, outcomes["signals"].uri, str(again), params)
    original = Path(outcomes["mixture"].uri) / "stages" / "s1"
    for part in sorted(original.glob("*.parquet")):
        assert filecmp.cmp(part, again / "stages" / "s1" / part.name, shallow=False)
    reseeded = tmp / "mixture-reseeded"
    run_mixture(spark, outcomes["signals"].uri, str(reseeded), params.model_copy(update={"seed": 7}))
    repeats = lambda folder: {(r["id"], r["repeats"]) for r in pq.read_table(str(folder / "stages" / "s2")).to_pylist()}
    assert repeats(again) != repeats(reseeded)


def test_run_report_holds_the_data_report(pipeline):
    cfg, outcomes, _ = pipeline
    report = Path(write_report(cfg.root, "test-run")).read_text()
    assert "### Data report" in report and "Curriculum stages" in report and "Signal shares" in report
    metrics = artifacts.read_manifest(outcomes["quality_train"].uri)["metrics"]["code"]
    assert "#### Classifiers (fastText, held-out)" in report
    assert f"| code | domain | {metrics['precision']:.3f} | {metrics['recall']:.3f} |" in report
    for png in ("funnel", "cluster_sizes", "domain_mix", "signal_shares"):
        assert (Path(outcomes["mixture"].uri) / "report" / f"{png}.png").stat().st_size > 1000


def test_dedup_command_reads_plain_jsonl(tmp_path, capsys):
    docs = [
        {"id": f"d{i}", "text": ("alpha beta gamma delta epsilon zeta eta theta iota kappa " * 3) + ("lambda" if i else ""),
         "url": f"https://s{i}.example/x", "snapshot": f"CC-MAIN-2024-{10 + i}"}
        for i in range(3)
    ] + [{"id": "other", "text": "a wholly different document about rivers and trees", "url": "https://o.example/", "snapshot": "CC-MAIN-2024-10"}]  # fmt: skip
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "out"
    cli_main(["data", "dedup", "--root", str(tmp_path / "artifacts"), "--input", str(source), "--output", str(out), "--top-k", "1", "--threshold", "0.6"])
    result = {r["id"]: r for r in pq.read_table(str(out / "data")).to_pylist()}
    assert set(result) == {"d0", "d1", "d2", "other"}
    assert {"id", "cluster_id", "cluster_size", "n_snapshots", "n_domains", "kept", "cluster_rank"} <= set(result["d0"])
    assert result["d0"]["cluster_id"] == result["d1"]["cluster_id"] == result["d2"]["cluster_id"] != result["other"]["cluster_id"]
    assert result["d0"]["cluster_size"] == 3 and result["d0"]["n_snapshots"] == 3 and result["d0"]["n_domains"] == 3
    assert sum(result[d]["kept"] for d in ("d0", "d1", "d2")) == 1 and result["other"]["kept"]


def test_a_crawl_moved_to_another_folder_gives_the_same_clusters(tmp_path, small_config, spark):
    """Document ids hash the input URI; the clusters (and so the held-out split and the mixture's draws) must not."""
    docs = [{"text": d.text, "url": d.url, "snapshot": d.snapshot} for d in generate(60, seed=5)]
    crawl = "".join(json.dumps(doc) + "\n" for doc in docs)
    clusters_by_text = []
    for folder in ("bucket-a/crawl", "bucket-b/moved/crawl"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "part-0.jsonl").write_text(crawl)
        out = tmp_path / folder.replace("/", "_")
        cfg = small_config(root=str(out / "artifacts"))
        run_stage(cfg, "ingest", "r", explicit_inputs=[str(tmp_path / folder)], output=str(out / "ingest"))
        run_stage(cfg, "dedup", "r", explicit_inputs=[str(out / "ingest")], output=str(out / "dedup"))
        clusters_by_text.append(sorted((r["text"], r["cluster_id"]) for r in rows(str(out / "dedup"), "data")))
    assert clusters_by_text[0] == clusters_by_text[1]
    assert len({cluster for _, cluster in clusters_by_text[0]}) < len(docs)  # near-duplicates did cluster


def test_a_curriculum_stage_left_empty_is_a_clear_error(pipeline, spark, tmp_path):
    cfg, outcomes, _ = pipeline
    starved = [stage.model_copy(update={"tokens": 0}) if stage.name == "s2" else stage for stage in cfg.mixture.stages]
    with pytest.raises(XgenError, match="curriculum stage 's2' selected no documents"):
        run_mixture(spark, outcomes["signals"].uri, str(tmp_path / "starved"), cfg.mixture.model_copy(update={"stages": starved}))
