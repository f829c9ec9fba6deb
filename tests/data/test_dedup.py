import filecmp
import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from xgen_core.config import DedupConfig
from xgen_core.data.dedup import run_dedup
from xgen_core.data.dedup.documents import content_hash, content_node
from xgen_core.data.neardup_set import generate, merged_hard_negatives, true_pairs_f1

pytestmark = pytest.mark.spark

PARAMS = DedupConfig(
    inputs=[], ngram=5, num_perm=128, seed=1, threshold=0.5, top_k=3, verify_jaccard=True,
    rank_by=["quality", "recency", "length"], rows_per_chunk=150, max_doc_chars=20_000, reuse_signatures_from="", hash_scheme="fast",
)  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def labelled_rows(n: int = 400, seed: int = 3) -> tuple[list, list[dict]]:
    docs = generate(n, seed=seed)
    rows = [{"id": d.id, "text": d.text, "url": d.url, "snapshot": d.snapshot} for d in docs]
    return docs, rows


def read_data(output: Path) -> list[dict]:
    return pq.read_table(output / "data").to_pylist()


@pytest.fixture(scope="module")
def labelled_run(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dedup")
    docs, rows = labelled_rows()
    source = write_jsonl(tmp / "in" / "docs.jsonl", rows)
    counts = run_dedup(spark, source, str(tmp / "out"), PARAMS)
    return docs, rows, read_data(tmp / "out"), counts, tmp


def test_clusters_match_ground_truth(labelled_run):
    docs, _, out, counts, _ = labelled_run
    predicted = {row["id"]: row["cluster_id"] for row in out}
    assert set(predicted) == {d.id for d in docs}  # no document lost
    scores = true_pairs_f1(predicted, {d.id: d.true_cluster for d in docs})
    assert scores["f1"] >= 0.98
    assert any(d.kind == "negative" for d in docs)
    assert merged_hard_negatives(predicted, docs) == 0
    assert counts["documents"] == len(docs) and counts["quarantined"] == 0


def test_frequency_metadata_is_exact(labelled_run):
    docs, rows, out, _, _ = labelled_run
    by_cluster = defaultdict(list)
    for row in out:
        by_cluster[row["cluster_id"]].append(row)
    for cluster_id, members in by_cluster.items():
        assert cluster_id == f'{min(content_node(content_hash(m["text"])) for m in members):015x}'
        domains = {m["url"].split("/")[2] for m in members}
        texts = {m["text"] for m in members}
        for m in members:
            assert m["cluster_size"] == len(members)
            assert m["n_snapshots"] == len({x["snapshot"] for x in members})
            assert m["n_domains"] == len(domains)
            assert m["n_variants"] == len(texts)
            assert m["n_exact"] == sum(x["text"] == m["text"] for x in members)
            assert m["first_snapshot"] == min(x["snapshot"] for x in members)
            assert m["last_snapshot"] == max(x["snapshot"] for x in members)
        assert sorted(m["cluster_rank"] for m in members) == list(range(1, len(members) + 1))
        kept = [m for m in members if m["kept"]]
        assert len(kept) == min(PARAMS.top_k, len(texts))
        assert len({m["text"] for m in kept}) == len(kept)  # kept variants are distinct texts
        assert all(m["cluster_rank"] <= PARAMS.top_k for m in kept)


def test_recency_then_length_order_the_variants(spark, tmp_path):
    base = " ".join(f"word{i}" for i in range(60))
    rows = [
        {"id": "old", "text": base, "url": "https://a.example/1", "snapshot": "CC-MAIN-2024-10"},
        {"id": "new-short", "text": base, "url": "https://b.example/1", "snapshot": "CC-MAIN-2024-30"},
        {"id": "new-long", "text": base + " extra", "url": "https://c.example/1", "snapshot": "CC-MAIN-2024-30"},
        {"id": "newest", "text": base + " tail words", "url": "https://d.example/1", "snapshot": "CC-MAIN-2024-42"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    params = PARAMS.model_copy(update={"top_k": 2})
    run_dedup(spark, source, str(tmp_path / "out"), params)
    ranks = {row["id"]: (row["cluster_rank"], row["kept"]) for row in read_data(tmp_path / "out")}
    # Exact copy "old" of "new-short" ranks after every distinct variant and is never kept.
    assert ranks == {"newest": (1, True), "new-long": (2, True), "new-short": (3, False), "old": (4, False)}


def test_short_documents_do_not_collapse_and_bad_rows_are_quarantined(spark, tmp_path):
    rows = [
        {"id": "s1", "text": "hello world", "url": "https://a.example/", "snapshot": "S1"},
        {"id": "s2", "text": "goodbye moon", "url": "https://b.example/", "snapshot": "S1"},
        {"id": "s3", "text": "yes", "url": "https://c.example/", "snapshot": "S1"},
        {"id": "s4", "text": "Hello   World", "url": "https://d.example/", "snapshot": "S2"},
        {"id": "empty", "text": "   ", "url": "https://e.example/", "snapshot": "S1"},
        {"id": "binary", "text": "\x00\x01\x02abc\x03\x04", "url": "https://f.example/", "snapshot": "S1"},
        {"id": "huge", "text": "x " * 15_000, "url": "https://g.example/", "snapshot": "S1"},
        {"id": "s1", "text": "another text under a repeated id", "url": "https://h.example/", "snapshot": "S1"},
        {"id": None, "text": "no id", "url": "https://i.example/", "snapshot": "S1"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    counts = run_dedup(spark, source, str(tmp_path / "out"), PARAMS)
    clusters = {row["id"]: row["cluster_id"] for row in read_data(tmp_path / "out")}
    # Short texts cluster only with texts equal after case and whitespace normalisation, never with each other.
    assert clusters["s1"] == clusters["s4"] and len({clusters["s1"], clusters["s2"], clusters["s3"]}) == 3
    quarantine = pq.read_table(tmp_path / "out" / "quarantine").to_pylist()
    reasons = sorted(row["quarantine_reason"] for row in quarantine)
    assert reasons == ["binary_looking", "duplicate_id", "empty", "missing_id", "too_long"]
    assert counts["quarantined"] == 5 and counts["documents"] == 4


def same_files(left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left) for p in left.rglob("*.parquet"))
    assert names == sorted(p.relative_to(right) for p in right.rglob("*.parquet"))
    return all(filecmp.cmp(left / name, right / name, shallow=False) for name in names)


def test_rerun_after_a_crash_gives_byte_identical_output(spark, labelled_run):
    _, _, _, _, tmp = labelled_run
    rerun = tmp / "rerun"
    (rerun / "data").mkdir(parents=True)
    (rerun / "data" / "part-00000.parquet").write_bytes(b"half-written garbage")
    (rerun / "data" / "part-00007-leftover.snappy.parquet").write_bytes(b"from the killed attempt")
    run_dedup(spark, str(tmp / "in" / "docs.jsonl"), str(rerun), PARAMS)
    for folder in ("data", "signatures", "signature_index", "quarantine"):
        assert same_files(tmp / "out" / folder, rerun / folder), folder


def test_refresh_with_a_new_snapshot_equals_a_run_from_scratch(spark, tmp_path):
    docs, rows = labelled_rows(300, seed=11)
    snapshots = sorted({row["snapshot"] for row in rows})
    newest = snapshots[-1]
    older = write_jsonl(tmp_path / "old.jsonl", [r for r in rows if r["snapshot"] != newest])
    everything = write_jsonl(tmp_path / "all.jsonl", rows)
    first = run_dedup(spark, older, str(tmp_path / "first"), PARAMS)
    refreshed = run_dedup(spark, everything, str(tmp_path / "refresh"), PARAMS, previous=str(tmp_path / "first"))
    scratch = run_dedup(spark, everything, str(tmp_path / "scratch"), PARAMS)
    assert first["snapshots_reusing_signatures"] == 0
    assert refreshed["snapshots_reusing_signatures"] == len(snapshots) - 1
    for folder in ("data", "signatures", "signature_index"):
        assert same_files(tmp_path / "refresh" / folder, tmp_path / "scratch" / folder), folder
    # Longevity grows as old documents reappear in the new snapshot.
    before = {r["id"]: r["n_snapshots"] for r in read_data(tmp_path / "first")}
    after = {r["id"]: r["n_snapshots"] for r in read_data(tmp_path / "refresh")}
    assert any(after[i] > before[i] for i in before)
    assert all(after[i] >= before[i] for i in before)


def write_parquet_rows(path: Path, rows: list[dict]) -> str:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path.parent)


def test_a_refresh_signs_only_the_new_snapshot_and_reads_the_old_ones_once(spark, tmp_path):
    """Snapshots as partitions of their own (as ingest appends them): the refresh hashes every text once, then
    reads only the new partition again to sign it; its output equals a run from scratch byte for byte."""
    _, rows = labelled_rows(300, seed=5)
    newest = max(row["snapshot"] for row in rows)
    old_rows, new_rows = [r for r in rows if r["snapshot"] != newest], [r for r in rows if r["snapshot"] == newest]
    old = write_parquet_rows(tmp_path / "in" / "old" / "part-0.parquet", old_rows)
    new = write_parquet_rows(tmp_path / "in" / "new" / "part-0.parquet", new_rows)
    run_dedup(spark, old, str(tmp_path / "first"), PARAMS)
    refreshed = run_dedup(spark, [old, new], str(tmp_path / "refresh"), PARAMS, previous=str(tmp_path / "first"))
    scratch = run_dedup(spark, [old, new], str(tmp_path / "scratch"), PARAMS)
    assert refreshed["snapshots_reusing_signatures"] == len({r["snapshot"] for r in old_rows})
    # One signature per distinct text of the new snapshot (its rows fit one chunk), read from its partition alone.
    assert len(new_rows) <= PARAMS.rows_per_chunk
    assert refreshed["texts_signed"] == len({r["text"] for r in new_rows})
    assert refreshed["documents_read_to_sign"] == len(new_rows)
    assert scratch["texts_signed"] >= len({(r["snapshot"], r["text"]) for r in rows})
    assert scratch["documents_read_to_sign"] == len(rows)
    for folder in ("data", "quarantine", "signatures", "signature_index"):
        assert same_files(tmp_path / "refresh" / folder, tmp_path / "scratch" / folder), folder
    assert refreshed["documents"] == scratch["documents"] == len(rows)


def test_a_refresh_with_nothing_new_signs_nothing_and_equals_the_previous_output(spark, tmp_path):
    _, rows = labelled_rows(200, seed=13)
    newest = max(row["snapshot"] for row in rows)
    old = write_parquet_rows(tmp_path / "in" / "old" / "part-0.parquet", [r for r in rows if r["snapshot"] != newest])
    new = write_parquet_rows(tmp_path / "in" / "new" / "part-0.parquet", [r for r in rows if r["snapshot"] == newest])
    run_dedup(spark, [old, new], str(tmp_path / "first"), PARAMS)
    again = run_dedup(spark, [old, new], str(tmp_path / "again"), PARAMS, previous=str(tmp_path / "first"))
    assert again["snapshots_reusing_signatures"] == len({r["snapshot"] for r in rows})
    assert again["texts_signed"] == 0 and again["documents_read_to_sign"] == 0
    for folder in ("data", "quarantine", "signatures", "signature_index"):
        assert same_files(tmp_path / "again" / folder, tmp_path / "first" / folder), folder


def write_signature_rows(spark, rows: list[tuple], uri: str, n_files: int, n_tasks: int = 1) -> None:
    """(snapshot, node, signature bytes, has_shingles) rows written to signatures/ as run_dedup writes what its scan
    tasks sign: STORED blocks from each of n_tasks tasks, then the files."""
    import numpy as np
    import pyarrow as pa

    from xgen_core.data.dedup.signatures import STORED_BLOCK_SCHEMA, stored_blocks, stored_record, write_signature_blocks
    from xgen_core.data.sparkio import placement_keys

    num_perm = len(rows[0][2]) // 4
    keys = placement_keys(spark, n_files)
    batches = []
    for task in np.array_split(np.arange(len(rows)), n_tasks):
        mine = [rows[i] for i in task]
        names = sorted({row[0] for row in mine})
        records = np.empty(len(mine), dtype=stored_record(num_perm))
        records["node"] = [row[1] for row in mine]
        records["has_shingles"] = [row[3] for row in mine]
        records["signature"] = np.frombuffer(b"".join(row[2] for row in mine), dtype=np.uint32).reshape(-1, num_perm)
        codes = np.array([names.index(row[0]) for row in mine])
        batches += stored_blocks(records, codes, names, keys)
    blocks = [tuple(row.values()) for row in pa.Table.from_batches(batches).to_pylist()]
    write_signature_blocks(spark.createDataFrame(blocks, STORED_BLOCK_SCHEMA), uri, n_files, num_perm)


def test_reused_signature_files_are_found_under_spark_escaped_snapshot_names(spark, tmp_path):
    from xgen_core.data.dedup.signatures import reused_signature_files

    names = ["CC-MAIN-2024:10", "odd/name %", "plain"]
    rows = [(name, index, bytes(8), True) for index, name in enumerate(names)]
    write_signature_rows(spark, rows, str(tmp_path / "signatures"), 2)
    found = reused_signature_files(str(tmp_path), names[:2])
    assert len(found) == 2 and all(Path(uri).is_file() for uri, _ in found)
    with pytest.raises(RuntimeError, match="no signature files"):
        reused_signature_files(str(tmp_path), ["never stored"])


def test_an_empty_input_gives_empty_readable_outputs(spark, tmp_path):
    import pyarrow as pa

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), empty)
    counts = run_dedup(spark, str(empty), str(tmp_path / "out"), PARAMS)
    assert counts["documents"] == 0 and counts["quarantined"] == 0
    data = pq.read_table(tmp_path / "out" / "data")
    assert data.num_rows == 0 and {"cluster_id", "kept", "cluster_rank"} <= set(data.column_names)


def test_signature_directories_are_named_as_spark_names_partitions(spark, tmp_path):
    from xgen_core.data.dedup.signatures import spark_partition_value

    values = ["".join(chr(c) for c in range(1, 128)), "CC-MAIN-2024:10", "odd/name %", "plain", "ünï", "a=b"]
    frame = spark.createDataFrame([(value, 1) for value in values], "snapshot string, n int")
    frame.write.partitionBy("snapshot").parquet(str(tmp_path / "spark"))
    written = sorted(path.name for path in (tmp_path / "spark").iterdir() if path.is_dir())
    assert written == sorted(f"snapshot={spark_partition_value(value)}" for value in values)


def test_written_signatures_read_back_once_per_text_sorted_by_node(spark, tmp_path):
    import numpy as np

    from xgen_core.data.dedup.signatures import SIGNATURE_SCHEMA

    generator = np.random.default_rng(3)
    rows = []
    for snapshot in ("s1", "s/2"):
        for node in generator.integers(0, 1 << 60, 300).tolist():
            signature = generator.integers(0, 1 << 32, 8, dtype=np.uint32).tobytes()
            rows += [(snapshot, node, signature, bool(node % 3))] * int(generator.integers(1, 3))
    write_signature_rows(spark, rows, str(tmp_path / "signatures"), 2, n_tasks=3)
    back = spark.read.schema(SIGNATURE_SCHEMA).parquet(str(tmp_path / "signatures")).select(*SIGNATURE_SCHEMA.names).collect()
    assert sorted(tuple(row) for row in back) == sorted(set(rows))
    for file in (tmp_path / "signatures").rglob("part-*.parquet"):
        nodes = pq.read_table(file).column("node").to_pylist()
        assert nodes == sorted(set(nodes)) and {node % 2 for node in nodes} == {int(file.name[5:10])}


def test_a_dedup_leaves_no_checkpoint_behind_in_its_session(spark, tmp_path):
    """Its checkpoints (the scan's signature blocks among them) are released: runs in one session do not pile up."""
    _, rows = labelled_rows(120, seed=17)
    persistent = spark.sparkContext._jsc.getPersistentRDDs
    before = {int(rdd_id) for rdd_id in persistent().keySet()}
    run_dedup(spark, write_jsonl(tmp_path / "docs.jsonl", rows), str(tmp_path / "out"), PARAMS)
    assert {int(rdd_id) for rdd_id in persistent().keySet()} == before
