"""math_eval: math-verify decides equivalence, GSM8K-format files with bad lines are quarantined, and the
stage runs end to end on a tiny model."""

import json

import pytest

from xgen_core.config import load_config
from xgen_core.errors import XgenError
from xgen_core.evals import math_eval
from xgen_core.evals.math_eval import arithmetic_problems, cut_completion, gold_answer, is_correct, read_gsm8k
from xgen_core.evals.results import read_results
from xgen_core.stages import run_stage


@pytest.mark.parametrize("gold, completion", [
    ("1/2", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{1}{2}", "1/2"),
    ("1,234", "so the total is 1234"),
    ("72", "She sold 48 + 24 = 72 clips. The answer is 72."),
    ("-3", "$-3$"),
])
def test_equivalent_answers_are_correct(gold, completion):
    assert is_correct(gold, completion)


@pytest.mark.parametrize("gold, completion", [("1/2", "0.4"), ("72", "The answer is 27."), ("5", "no idea"),
                                              ("5", "")])
def test_different_or_missing_answers_are_wrong(gold, completion):
    assert not is_correct(gold, completion)


def test_gold_is_the_value_after_the_last_marker_and_completions_stop_at_the_next_question():
    assert gold_answer("Natalia sold 48/2 = 24 clips in May.\n#### 72") == "72"
    assert gold_answer("42") == "42"
    assert cut_completion(" 3 + 4 = 7\n\nQuestion: what is 2 + 2?\nAnswer: 4") == "3 + 4 = 7"


def _gsm8k_lines():
    return [
        json.dumps({"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}),
        "{not json",
        json.dumps({"question": "A question without an answer?"}),
        json.dumps({"question": "What is half of one?", "answer": "#### 1/2"}),
        json.dumps({"question": "An answer with no value?", "answer": "#### banana"}),
        json.dumps(["a", "list"]),
        "",
    ]


def test_bad_lines_are_quarantined_with_their_reason_not_a_crash():
    problems, quarantined = read_gsm8k("\n".join(_gsm8k_lines()), "gsm8k.jsonl")
    assert [p["gold"] for p in problems] == ["7", "1/2"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [
        (2, "not_json"), (3, "no_answer"), (5, "unparsable_answer"), (6, "not_an_object")]


def test_generated_arithmetic_is_deterministic_and_verifiable():
    problems = arithmetic_problems(8, seed=3)
    assert problems == arithmetic_problems(8, seed=3) and problems != arithmetic_problems(8, seed=4)
    for problem in problems:
        steps, value = problem["answer"].split("\n#### ")
        assert is_correct(value, steps.rsplit("=", 1)[1])  # the worked answer's last result is the value


def test_math_eval_stage_scores_a_file_and_the_generated_set_and_counts_quarantined_lines(tmp_path, model_artifact):
    model_uri, _ = model_artifact
    data = tmp_path / "gsm8k_small.jsonl"
    data.write_text("\n".join(_gsm8k_lines()) + "\n")
    cfg = load_config("tiny", [f"root={tmp_path / 'artifacts'}", "model.preset=tiny", "math_eval.generated=4",
                               f"math_eval.files=[{data}]", "math_eval.max_new_tokens=8",
                               f"math_eval.models=[{model_uri}]"])
    outcome = run_stage(cfg, "math_eval", "test-run")
    rows = read_results(outcome.uri)
    assert [(r["eval"], r["task"], r["n"]) for r in rows] == [("math_eval", "arithmetic", 4),
                                                              ("math_eval", "gsm8k_small", 2)]
    assert all(r["model"] == "pretrain-abc" and 0 <= r["score"] <= 100 and "length" not in r for r in rows)
    counts = outcome.manifest["counts"]
    assert counts["quarantined"] == 4 and counts["quarantined_not_json"] == 1
    assert len((tmp_path / "artifacts").glob("math_eval-*/quarantine.jsonl").__next__().read_text().splitlines()) == 4
    section = math_eval.report_section(outcome.manifest, outcome.uri, str(tmp_path))
    assert "| arithmetic |" in section and "4 input lines quarantined" in section
    assert run_stage(cfg, "math_eval", "test-run").reused  # idempotent: a finished artifact is reused


def test_a_file_with_no_usable_line_fails_with_the_count(tmp_path, model_artifact):
    data = tmp_path / "broken.jsonl"
    data.write_text("{oops\n[1]\n")
    cfg = load_config("tiny", [f"root={tmp_path}", "math_eval.generated=0", f"math_eval.files=[{data}]",
                               f"math_eval.models=[{model_artifact[0]}]"])
    with pytest.raises(XgenError, match="no usable problem .2 lines quarantined"):
        run_stage(cfg, "math_eval", "test-run")
