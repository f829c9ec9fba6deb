"""The README's measured figures are the latest ones recorded in docs/benchmarks.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def latest_dedup_speedup() -> str:
    """Speed-up of the last numbered run in the dedup table (ablation rows are labelled, not numbered)."""
    section = (REPO / "docs" / "benchmarks.md").read_text().split("\n## Dedup", 1)[1].split("\n## ", 1)[0]
    runs = [line.split("|")[1:-1] for line in section.splitlines() if re.match(r"\| \d+\b", line)]
    header = next(line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| run |"))
    column = [cell.strip() for cell in header].index("speed-up")
    return runs[-1][column].strip().strip("*")


def test_the_readme_dedup_speedup_is_the_latest_benchmark_row():
    readme = " ".join((REPO / "README.md").read_text().split())
    claims = re.findall(r"runs ([\d.x-]+) faster than single-process datasketch", readme)
    assert claims == [latest_dedup_speedup()] == ["1.19x"]
    assert "docs/benchmarks.md" in readme.split("faster than single-process datasketch", 1)[1][:200]
