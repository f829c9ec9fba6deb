"""Ingest on local Spark: every record lands in data/ or quarantine/, with reasons and counts."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.test_readers import jsonl_lines, warc_records
from xgen_core import artifacts
from xgen_core.data import readers
from xgen_core.errors import InputError
from xgen_core.stages import run_stage

pytestmark = pytest.mark.spark

MALFORMED = [
    b"{broken json",
    b"\xc3\x28 invalid utf-8",
    json.dumps({"url": "https://no-text.org/"}).encode(),
    json.dumps({"text": ["not", "a", "string"]}).encode(),
    json.dumps({"text": "   \x00\x01  "}).encode(),
]


def write_crawl(path, good: int, bad: int) -> None:
    lines = [
        json.dumps({"text": f"Document number {i} talks about gardens and rivers.", "url": f"https://www.site{i % 7}.co.uk/p/{i}",
                    "snapshot": "CC-MAIN-2024-10", "crawl_time": "2024-03-05T10:00:00Z"}).encode()
        for i in range(good)
    ]
    for j in range(bad):
        lines.insert((j * 21) % len(lines), MALFORMED[j % len(MALFORMED)])
    path.write_bytes(b"\n".join(lines) + b"\n")


def read_parquet_dir(path):
    return pq.read_table(str(path), partitioning=None).to_pylist()  # the snapshot column is in the files too


def test_cli_ingests_1000_good_and_quarantines_50_malformed(tmp_path):
    crawl = tmp_path / "crawl.jsonl"
    write_crawl(crawl, good=1000, bad=50)
    out = tmp_path / "prepared"
    result = subprocess.run(
        [sys.executable, "-m", "xgen_core.cli", "data", "ingest", "--input", str(crawl), "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    good = read_parquet_dir(out / "data")
    quarantined = read_parquet_dir(out / "quarantine")
    assert len(good) == 1000 and len(quarantined) == 50
    assert {q["reason"] for q in quarantined} == {"bad_json", "invalid_utf8", "missing_text", "wrong_type:text", "empty_text"}
    assert all(q["raw"] is not None and q["input_file"] == str(crawl.resolve()) for q in quarantined)
    assert {g["domain"] for g in good} == {f"site{i}.co.uk" for i in range(7)}
    assert all(g["language"] == "en" and g["snapshot"] == "CC-MAIN-2024-10" for g in good)
    assert len({g["doc_id"] for g in good}) == 1000
    counts = artifacts.read_manifest(str(out))["counts"]
    assert counts["records_good"] == 1000 and counts["records_quarantined"] == 50
    assert counts["quarantined_bad_json"] == 10


def test_too_many_malformed_records_fail_clearly_and_commit_nothing(tmp_path, small_config, spark):
    crawl = tmp_path / "bad.jsonl"
    write_crawl(crawl, good=20, bad=10)
    cfg = small_config("ingest.max_bad_fraction=0.2")
    with pytest.raises(InputError, match=r"10 of 30 records \(33.3%\) are malformed.*bad_json=2"):
        run_stage(cfg, "ingest", "r", explicit_inputs=[str(crawl)], output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_sample_corpus_ingests_whole_with_stable_ids(small_config, spark, tmp_path):
    cfg = small_config()
    corpus = run_stage(cfg, "sample_corpus", "r")
    first = run_stage(cfg, "ingest", "r")
    again = run_stage(cfg, "ingest", "r2", explicit_inputs=[corpus.uri], output=str(tmp_path / "again"))
    rows = read_parquet_dir(f"{first.uri}/data")
    assert len(rows) == corpus.manifest["counts"]["documents"]
    assert first.manifest["counts"]["records_quarantined"] == 0
    assert sorted(r["doc_id"] for r in rows) == sorted(r["doc_id"] for r in read_parquet_dir(tmp_path / "again" / "data"))
    wet_rows = [r for r in rows if r["source"] == "wet"]
    assert wet_rows and {r["snapshot"] for r in wet_rows} == {"CC-MAIN-2024-42"}
    assert {r["source"] for r in rows} == {"code", "prose", "math", "web", "wet"}
    assert {"en", "de"} <= {r["language"] for r in rows}
    assert all(r["crawl_time"] is not None and len(r["content_hash"]) == 40 for r in rows)
    assert first.manifest["input_versions"] == {"sample_corpus": corpus.version}


def test_parquet_input(tmp_path, small_config, spark):
    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(pa.table({"text": ["un texte en français sur la cuisine", None], "url": ["https://a.fr/", "https://b.fr/"]}),
                   source / "part-0.parquet")
    cfg = small_config("ingest.max_bad_fraction=0.5")
    outcome = run_stage(cfg, "ingest", "r", explicit_inputs=[str(source)], output=str(tmp_path / "out"))
    assert [r["language"] for r in read_parquet_dir(tmp_path / "out" / "data")] == ["fr"]
    assert outcome.manifest["counts"]["quarantined_missing_text"] == 1


def test_files_of_the_same_name_in_two_folders_get_distinct_ids(tmp_path, small_config, spark):
    for folder in ("march", "april"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "part-0.jsonl").write_bytes(b"".join(jsonl_lines(5)))
    inputs = [str(tmp_path / "march"), str(tmp_path / "april")]
    run_stage(small_config(), "ingest", "r", explicit_inputs=inputs, output=str(tmp_path / "out"))
    rows = read_parquet_dir(tmp_path / "out" / "data")
    assert len(rows) == 10 and len({r["doc_id"] for r in rows}) == 10


def test_a_truncated_gzip_is_quarantined_once_and_named_in_the_manifest(tmp_path, small_config, spark):
    source = tmp_path / "in"
    source.mkdir()
    compressed = gzip.compress(b"".join(jsonl_lines(3000)), mtime=0)
    (source / "cut.jsonl.gz").write_bytes(compressed[: len(compressed) // 2])
    (source / "whole.jsonl").write_bytes(b"".join(jsonl_lines(10)))
    outcome = run_stage(small_config(), "ingest", "r", explicit_inputs=[str(source)], output=str(tmp_path / "out"))
    [cut] = read_parquet_dir(tmp_path / "out" / "quarantine")
    kept_from_cut = len(read_parquet_dir(tmp_path / "out" / "data")) - 10
    assert cut["reason"] == "truncated_file" and cut["raw"].startswith(f"truncated after {kept_from_cut} records")
    assert cut["byte_offset"] == sum(len(line) for line in jsonl_lines(kept_from_cut))
    assert outcome.manifest["counts"]["quarantined_truncated_file"] == 1
    [named] = outcome.manifest["metrics"]["truncated_files"]
    assert named["input_file"] == str((source / "cut.jsonl.gz").resolve())
    assert named["records_read"] == kept_from_cut and named["byte_offset"] == cut["byte_offset"]


def test_warc_input_is_read_into_documents(tmp_path, small_config, spark):
    source = tmp_path / "in"
    source.mkdir()
    (source / "crawl.warc.gz").write_bytes(b"".join(gzip.compress(r, mtime=0) for r in warc_records()))
    cfg = small_config("ingest.max_bad_fraction=0.5")
    outcome = run_stage(cfg, "ingest", "r", explicit_inputs=[str(source)], output=str(tmp_path / "out"))
    rows = read_parquet_dir(tmp_path / "out" / "data")
    assert sorted(r["url"] for r in rows) == ["https://mills.org/hogsmill", "https://mills.org/wandle"]
    assert all(r["source"] == "warc" and r["snapshot"] == "CC-MAIN-2024-42" and r["language"] == "en" for r in rows)
    assert all(r["crawl_time"] is not None and "Croydon" in r["text"] for r in rows)
    counts = outcome.manifest["counts"]
    assert counts["quarantined_not_html"] == 1 and counts["quarantined_http_status"] == 1


def test_warc_input_without_its_html_extractor_fails_before_reading(tmp_path, small_config, spark, monkeypatch):
    source = tmp_path / "in"
    source.mkdir()
    (source / "crawl.warc").write_bytes(b"".join(warc_records()))
    monkeypatch.setitem(sys.modules, "trafilatura", None)
    readers._trafilatura_extract.cache_clear()
    try:
        with pytest.raises(InputError, match=r"crawl\.warc: .*need trafilatura"):
            run_stage(small_config(), "ingest", "r", explicit_inputs=[str(source)], output=str(tmp_path / "out"))
    finally:
        readers._trafilatura_extract.cache_clear()
    assert not (tmp_path / "out").exists()


def write_snapshot(folder, snapshot: str, n: int) -> str:
    folder.mkdir()
    lines = [json.dumps({"text": f"{snapshot} page {i} on mills and rivers", "url": f"https://m{i}.org/{snapshot}",
                         "snapshot": snapshot}) for i in range(n)]
    (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")  # same file name in every folder
    return str(folder)


def layout_rows(uri: str) -> list[dict]:
    from xgen_core.data.prepared_layout import document_uris

    rows = [row for folder in document_uris(uri) for row in read_parquet_dir(folder)]
    return sorted(rows, key=lambda row: row["doc_id"])


def test_append_references_earlier_snapshots_and_equals_a_scratch_ingest(tmp_path, small_config, spark):
    march, april, may = (write_snapshot(tmp_path / s, s, n) for s, n in (("CC-2024-10", 5), ("CC-2024-14", 4),
                                                                          ("CC-2024-18", 3)))
    first = run_stage(small_config(), "ingest", "r", explicit_inputs=[march])
    append_cfg = small_config(f"ingest.append_to={first.uri}")
    second = run_stage(append_cfg, "ingest", "r", explicit_inputs=[april])

    partitions = second.manifest["layout"]["partitions"]
    assert [(p["snapshot"], p["artifact"], p["documents"]) for p in partitions] == [
        ("CC-2024-10", first.uri, 5), ("CC-2024-14", None, 4)]
    assert partitions[0]["version"] == first.version and partitions[0]["path"] == "data/snapshot=CC-2024-10"
    assert sorted(p.name for p in (Path(second.uri) / "data").iterdir()) == ["snapshot=CC-2024-14"]  # no copy
    assert second.manifest["counts"]["documents_all_snapshots"] == 9
    assert second.manifest["counts"]["snapshots_referenced"] == 1

    scratch = run_stage(small_config(), "ingest", "r", explicit_inputs=[march, april], output=str(tmp_path / "scratch"))
    assert layout_rows(second.uri) == layout_rows(scratch.uri)
    assert run_stage(append_cfg, "ingest", "r2", explicit_inputs=[april]).reused  # idempotent

    third = run_stage(small_config(f"ingest.append_to={second.uri}"), "ingest", "r", explicit_inputs=[may])
    assert [(p["snapshot"], p["artifact"]) for p in third.manifest["layout"]["partitions"]] == [
        ("CC-2024-10", first.uri), ("CC-2024-14", second.uri), ("CC-2024-18", None)]  # references never chain
    assert len(layout_rows(third.uri)) == 12


def test_append_refuses_a_snapshot_the_earlier_artifact_holds(tmp_path, small_config, spark):
    march = write_snapshot(tmp_path / "march", "CC-2024-10", 3)
    again = write_snapshot(tmp_path / "march-again", "CC-2024-10", 2)
    first = run_stage(small_config(), "ingest", "r", explicit_inputs=[march])
    with pytest.raises(InputError, match=r"already holds snapshot\(s\) CC-2024-10"):
        run_stage(small_config(f"ingest.append_to={first.uri}"), "ingest", "r", explicit_inputs=[again],
                  output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="not a committed artifact"):
        run_stage(small_config(f"ingest.append_to={tmp_path / 'nothing'}"), "ingest", "r", explicit_inputs=[again])
