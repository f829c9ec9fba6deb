"""The shared results writer: results.jsonl rows, the Markdown table, validation of what goes in."""

import json

import pytest

from xgen_core.errors import XgenError
from xgen_core.evals.results import markdown_table, mean_score, read_results, result_row, write_results


def test_rows_round_trip_through_results_jsonl_and_the_table(tmp_path):
    rows = [result_row("ruler", "pretrain-a", "niah_single_1", length=256, n=4, score=50),
            result_row("ruler", "pretrain-a", "niah_single_1", length=128, n=4, score=100),
            result_row("ruler", "pretrain-a", "qa", length=256, n=4, score=0.123)]
    paths = write_results(str(tmp_path), rows, title="RULER")
    assert read_results(str(tmp_path)) == rows
    first = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert list(first) == ["eval", "model", "task", "length", "n", "score"]
    assert rows[2]["score"] == 0.12
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("### Eval: RULER")
    assert "| task | pretrain-a @ 128 | pretrain-a @ 256 | n |" in table  # lengths ascending
    assert "| niah_single_1 | 100.0 | 50.0 | 4 |" in table
    assert "| qa | — | 0.1 | 4 |" in table  # a cell never built
    assert paths["results"].endswith("results.jsonl")


def test_rows_without_a_length_and_with_extra_fields():
    row = result_row("humaneval", "sft-b", "humaneval", n=164, score=12.5, metric="pass@1")
    assert row == {"eval": "humaneval", "model": "sft-b", "task": "humaneval", "n": 164, "score": 12.5,
                   "metric": "pass@1"}
    table = markdown_table([row, result_row("humaneval", "sft-c", "humaneval", n=160, score=10)])
    assert "| humaneval | 12.5 (n=164) | 10.0 (n=160) | — |" in table  # n differs: shown per cell
    assert mean_score([row, result_row("x", "m", "t", n=1, score=7.5)]) == 10.0
    assert markdown_table([]) == "(no results)"


@pytest.mark.parametrize("score", [-1, 100.5, float("nan"), "12"])
def test_scores_outside_0_100_are_refused(score):
    with pytest.raises(XgenError, match="score"):
        result_row("ruler", "m", "t", n=1, score=score)


def test_rows_missing_a_required_key_are_refused(tmp_path):
    with pytest.raises(XgenError, match="without"):
        write_results(str(tmp_path), [{"eval": "x", "model": "m", "task": "t", "n": 1}])
