"""A weekly refresh: ingest appends the new snapshot, dedup reads every snapshot and reuses the unchanged ones'
signatures, and the result equals a dedup of the same input from scratch."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.data.test_dedup import same_files
from xgen_core.stages import run_stage

pytestmark = pytest.mark.spark

EVERGREEN = "the mill on the river grinds wheat for the village bakers every morning before the market opens its gates"


def write_snapshot(folder, snapshot: str, n: int) -> str:
    folder.mkdir()
    pages = [f"{snapshot} page {i} about mills and rivers and the grain they grind for the town" for i in range(n)]
    lines = [json.dumps({"text": text, "url": f"https://m{i}.org/{snapshot}", "snapshot": snapshot})
             for i, text in enumerate([*pages, EVERGREEN])]
    (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_dedup_of_an_appended_ingest_reuses_signatures_and_equals_a_scratch_dedup(tmp_path, small_config, spark):
    march, april, may = (write_snapshot(tmp_path / s, s, 6) for s in ("CC-2024-10", "CC-2024-14", "CC-2024-18"))
    first_ingest = run_stage(small_config(), "ingest", "r", explicit_inputs=[march, april])
    first_dedup = run_stage(small_config(), "dedup", "r", explicit_inputs=[f"ingest={first_ingest.uri}"])
    appended = run_stage(small_config(f"ingest.append_to={first_ingest.uri}"), "ingest", "r", explicit_inputs=[may])

    refresh_cfg = small_config(f"dedup.reuse_signatures_from={first_dedup.uri}")
    refresh = run_stage(refresh_cfg, "dedup", "r", [f"ingest={appended.uri}"], output=str(tmp_path / "refresh"))
    scratch = run_stage(small_config(), "dedup", "r", [f"ingest={appended.uri}"], output=str(tmp_path / "scratch"))

    assert refresh.manifest["counts"]["snapshots_reusing_signatures"] == 2
    assert scratch.manifest["counts"]["snapshots_reusing_signatures"] == 0
    # Only May's partition is read again, to sign its texts.
    assert refresh.manifest["counts"]["documents_read_to_sign"] == 7
    assert refresh.manifest["counts"]["texts_signed"] == 7
    for folder in ("data", "signatures", "signature_index", "quarantine"):
        assert same_files(tmp_path / "refresh" / folder, tmp_path / "scratch" / folder), folder
    rows = pq.read_table(tmp_path / "refresh" / "data").to_pylist()
    assert len(rows) == 21  # every snapshot's documents, the referenced ones included
    assert {row["n_snapshots"] for row in rows if row["text"] == EVERGREEN} == {3}  # longevity spans the append
