"""run_stage: versioned paths, reuse, leases and atomic commit, on local disk and on GCS (emulator and double)."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from xgen_core import artifacts
from xgen_core.stages import STAGES, pipeline_order, resolve, run_stage
from xgen_core.storage import join, store_for


def committed_versions(root: str, stage: str) -> list[str]:
    names = {f.uri[len(root) + 1 :].split("/")[0] for f in store_for(root).list_files(root)}
    return sorted(n for n in names if n.startswith(f"{stage}-") and artifacts.is_committed(join(root, n)))


def test_rerun_reuses_the_finished_artifact(root, small_config, caplog):
    cfg = small_config(root=root)
    first = run_stage(cfg, "sample_corpus", "run-1")
    with caplog.at_level(logging.INFO, logger="xgen"):
        second = run_stage(cfg, "sample_corpus", "run-2")
    assert not first.reused and second.reused
    assert second.uri == first.uri == join(root, f"sample_corpus-{first.version}")
    assert "already committed" in caplog.text
    assert second.manifest == first.manifest
    assert committed_versions(root, "sample_corpus") == [f"sample_corpus-{first.version}"]


def test_manifest_says_what_decided_the_output(root, small_config):
    outcome = run_stage(small_config(root=root), "sample_corpus", "run-1")
    manifest = artifacts.read_manifest(outcome.uri)
    assert manifest["stage"] == "sample_corpus" and manifest["version"] == outcome.version
    assert manifest["config"]["sample_corpus"]["code_docs"] == 12
    assert manifest["counts"]["documents"] > 40
    assert manifest["started_at"] <= manifest["finished_at"]
    run_record = json.loads(store_for(root).read_text(join(root, "runs", "run-1", "stages", "sample_corpus.json")))
    assert run_record["uri"] == outcome.uri


def test_config_change_gets_a_new_version_path(root, small_config):
    a = run_stage(small_config(root=root), "sample_corpus", "r")
    b = run_stage(small_config("sample_corpus.seed=99", root=root), "sample_corpus", "r")
    assert a.version != b.version and not b.reused
    assert committed_versions(root, "sample_corpus") == sorted([f"sample_corpus-{a.version}", f"sample_corpus-{b.version}"])
    assert artifacts.read_manifest(a.uri)["config"]["sample_corpus"]["seed"] == 1234  # the first is untouched


def test_settings_that_do_not_change_the_output_keep_the_version(small_config):
    base = resolve(small_config(), "ingest")
    assert resolve(small_config("spark.master=local[1]", "storage.heartbeat_s=5"), "ingest").version == base.version
    assert resolve(small_config("ingest.max_text_chars=10"), "ingest").version != base.version
    assert resolve(small_config("sample_corpus.seed=7"), "ingest").version != base.version  # upstream changed


def test_explicit_output_is_written_exactly_there(root, small_config):
    target = join(root, "elsewhere", "my-corpus")
    outcome = run_stage(small_config(root=join(root, "unused")), "sample_corpus", "r", output=target)
    assert outcome.uri == target and artifacts.is_committed(target)
    assert store_for(target).exists(join(target, "jsonl", "crawl-CC-MAIN-2024-10.jsonl"))
    assert [f.uri for f in store_for(root).list_files(join(root, "unused"))] == []


def test_two_concurrent_writers_end_with_one_committed_artifact(cas_root, small_config):
    cfg = small_config(root=cas_root)
    outcomes, errors = [], []
    barrier = threading.Barrier(2)

    def writer():
        barrier.wait()
        try:
            outcomes.append(run_stage(cfg, "sample_corpus", "r"))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(o.reused for o in outcomes) == [False, True]
    assert len({o.uri for o in outcomes}) == 1
    assert len(committed_versions(cas_root, "sample_corpus")) == 1
    leftovers = [f.uri for f in store_for(cas_root).list_files(cas_root) if ".staging-" in f.uri or ".lease" in f.uri]
    assert leftovers == []


def test_a_stale_lease_is_taken_over(cas_root, small_config):
    cfg = small_config(root=cas_root)
    resolved = resolve(cfg, "sample_corpus")
    lease = artifacts.lease_uri(resolved.uri)
    store_for(lease).write_text(lease, json.dumps({"owner": "dead-host:1", "expires_at": time.time() - 1}))
    stale_staging = artifacts.staging_uri(resolved.uri)
    store_for(stale_staging).write_text(join(stale_staging, "half-written"), "x")
    outcome = run_stage(cfg, "sample_corpus", "r")
    assert not outcome.reused and artifacts.is_committed(outcome.uri)
    assert not store_for(stale_staging).exists(join(stale_staging, "half-written"))
    assert not store_for(lease).exists(lease)


def test_a_live_lease_is_waited_for_until_it_expires(cas_root, small_config, caplog, monkeypatch):
    monkeypatch.setattr("xgen_core.stages.LEASE_POLL_S", 0.2)
    cfg = small_config(root=cas_root)
    lease = artifacts.lease_uri(resolve(cfg, "sample_corpus").uri)
    store_for(lease).write_text(lease, json.dumps({"owner": "busy-host:7", "expires_at": time.time() + 1.5}))
    with caplog.at_level(logging.INFO, logger="xgen"):
        outcome = run_stage(cfg, "sample_corpus", "r")
    assert "being written by busy-host:7" in caplog.text
    assert artifacts.is_committed(outcome.uri)


def test_a_writer_that_lost_its_lease_does_not_commit(cas_root):
    uri = join(cas_root, "x.lease.json")
    first = artifacts.Lease(uri, ttl_s=0.05, heartbeat_s=100)
    assert first.try_acquire()
    time.sleep(0.1)
    second = artifacts.Lease(uri, ttl_s=60, heartbeat_s=100)
    assert second.try_acquire()
    assert not first.still_held()
    assert second.still_held()
    first.release()
    assert store_for(uri).exists(uri)  # the loser must not delete the winner's lease
    second.release()
    assert not store_for(uri).exists(uri)


def test_a_failing_stage_commits_nothing_and_a_rerun_succeeds(root, small_config, monkeypatch):
    cfg = small_config(root=root)

    def crash(ctx):
        store_for(ctx.output).write_text(join(ctx.output, "partial"), "half")
        raise RuntimeError("killed half way")

    import xgen_core.data.sample_corpus as sample_corpus

    real_run = sample_corpus.run
    monkeypatch.setattr(sample_corpus, "run", crash)
    with pytest.raises(RuntimeError):
        run_stage(cfg, "sample_corpus", "r")
    assert committed_versions(root, "sample_corpus") == []
    assert [f.uri for f in store_for(root).list_files(root) if "sample_corpus" in f.uri] == []
    monkeypatch.setattr(sample_corpus, "run", real_run)
    assert not run_stage(cfg, "sample_corpus", "r").reused


def test_the_stage_table_is_in_dependency_order_with_unique_names():
    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    assert [s.name for s in pipeline_order()][:2] == ["sample_corpus", "ingest"]
    for stage in STAGES:
        for upstream in stage.upstream:
            assert names.index(upstream) < names.index(stage.name)
