"""GRPO: group-relative advantages, the clipped token-level objective, the reward registry (math-verify, the
sandbox), and a killed run that resumes to the same rewards and losses."""

import jax.numpy as jnp
import numpy as np
import pytest

from xgen_core.evals import sandbox
from xgen_core.posttrain.data import code_task, generated_grpo_rows, number_problem, wrong_answer
from xgen_core.errors import XgenError
from xgen_core.infer.sampler import bucket_shape
from xgen_core.model.attention import length_multiple
from xgen_core.posttrain.grpo import clipped_objective, group_advantages, kl_penalty, rollout_width, split_tasks
from xgen_core.posttrain.rewards import completion_code, reward
from xgen_core.train.metrics import read_metrics

from tests.posttrain.fixtures import kill_then_resume, run_stage_function


def test_advantages_are_relative_to_the_group():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    advantages = group_advantages(rewards, eps=1e-6)
    np.testing.assert_allclose(advantages[0], [1, -1, -1, 1], rtol=1e-5)
    assert (advantages[1] == 0).all()  # a group that all agree carries no signal


def test_clipped_objective_normalises_over_tokens_and_clips_the_ratio():
    old = jnp.zeros((2, 3))
    new = jnp.log(jnp.array([[1.5, 1.0, 1.0], [0.5, 1.0, 1.0]]))
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, clip_fraction = clipped_objective(new, old, jnp.array([1.0, -1.0]), mask, clip_eps=0.2)
    # row 0, A = +1: -min(1.5, 1.2) - 1 = -2.2; row 1, A = -1: -min(-0.5, -0.8) + 1 + 1 = 2.8; 5 tokens
    assert float(loss) == pytest.approx((-2.2 + 2.8) / 5)
    assert float(clip_fraction) == pytest.approx(2 / 5)
    assert float(kl_penalty(new, new, mask)) == 0.0


def test_math_rewards_go_through_math_verify():
    row = {"prompt": "What is 3 - 5?", "answer": "-2"}
    assert reward(row, "3 - 5 = -2. The answer is -2.") == 1.0
    assert reward(row, "3 - 5 = -2. The answer is 2.") == 0.0
    assert reward(row, "I do not know") == 0.0
    assert reward({"prompt": "half", "answer": "0.5"}, "The answer is 1/2.") == 1.0


def test_code_rewards_run_the_tests_in_the_sandbox():
    problem = sandbox.isolation_problem()
    assert problem is None, f"the code reward needs the sandbox's isolation: {problem}"
    import random

    prompt, solution, tests = code_task(random.Random(0))
    row = {"prompt": prompt, "tests": tests}
    assert reward(row, f"```python\n{solution}\n```") == 1.0
    assert reward(row, solution.replace("return x", "return 1 + x")) == 0.0
    assert completion_code("text\n```py\nprint(1)\n```\nmore") == "print(1)\n"


def test_generated_tasks_are_deterministic_and_mixed():
    rows = generated_grpo_rows(5, math_prompts=10, code_prompts=4, max_operand=9)
    assert rows == generated_grpo_rows(5, math_prompts=10, code_prompts=4, max_operand=9)
    assert sum("tests" in r for r in rows) == 4 and sum("answer" in r for r in rows) == 10


def test_generated_maths_prompts_can_be_limited_to_named_kinds():
    rows = generated_grpo_rows(5, math_prompts=40, code_prompts=0, max_operand=9, math_kinds=["first", "identity"])
    firsts = [r for r in rows if r["prompt"].startswith("What is the first of ")]
    assert 0 < len(firsts) < 40 and all(" of " not in r["prompt"] for r in rows if r not in firsts)
    for row in firsts:
        assert row["answer"] == row["prompt"].removeprefix("What is the first of ").split(",")[0]
    assert generated_grpo_rows(5, 10, 0, 9) == generated_grpo_rows(5, 10, 0, 9, math_kinds=[])  # [] = the mix
    with pytest.raises(XgenError, match="unknown maths task kinds"):
        generated_grpo_rows(5, 10, 0, 9, math_kinds=["first", "median"])


def test_the_maths_family_is_large_and_its_worked_solutions_verify():
    import random

    rng = random.Random(0)
    problems = [number_problem(rng, max_operand=9) for _ in range(400)]
    assert len({question for question, _, _ in problems}) > 250  # sums and identities repeat; lists rarely do
    for word in ("first", "last", "largest", "smallest", "+ 0", "1 *", " - "):
        assert any(word in question for question, _, _ in problems), word
    for question, solution, value in problems:
        row = {"prompt": question, "answer": str(value)}
        assert reward(row, solution) == 1.0, (question, solution)
        assert reward(row, f"The answer is {wrong_answer(rng, question, value)}.") == 0.0, question
    assert number_problem(random.Random(3), 9) == number_problem(random.Random(3), 9)
    question, _, value = next(p for p in problems if "largest" in p[0])
    assert value == max(int(n) for n in question.removeprefix("What is the largest of ").rstrip("?").split(", "))


def test_training_prompts_never_repeat_a_heldout_prompt():
    rows = [{"prompt": p, "answer": "0"} for p in ("a", "b", "c", "a", "d", "b", "a")]
    heldout, train, dropped = split_tasks(rows, heldout_prompts=2)
    assert heldout == [0, 1] and train == [2, 4] and dropped == 3
    rows = generated_grpo_rows(1234, math_prompts=288, code_prompts=0, max_operand=9)  # sums repeat
    heldout, train, dropped = split_tasks(rows, heldout_prompts=32)
    assert dropped > 0 and not {rows[i]["prompt"] for i in heldout} & {rows[i]["prompt"] for i in train}
    with pytest.raises(XgenError, match="repeats a held-out prompt"):
        split_tasks([{"prompt": "a", "answer": "0"}] * 3, heldout_prompts=1)


@pytest.fixture(scope="module")
def uninterrupted(init_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    return out, run_stage_function("grpo", init_artifact, str(out))


def test_grpo_writes_the_metrics_of_every_step(uninterrupted):
    out, _ = uninterrupted
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    for record in records[1:]:
        assert {"reward_mean", "pass_rate", "response_length", "clip_fraction", "entropy", "loss"} <= set(record)
        assert 0 <= record["reward_mean"] <= 1 and record["response_length"] > 0
    assert "heldout_reward_mean" in records[0] and "heldout_reward_mean" in records[-1]
    assert "kl" not in records[1]  # kl_coef 0: no KL term, no reference model


def test_killed_grpo_resumes_with_identical_rewards_and_losses(init_artifact, uninterrupted, tmp_path):
    out, _ = uninterrupted
    messages = kill_then_resume("grpo", init_artifact, tmp_path, kill_step=3)
    assert any("resuming from the checkpoint of step 2" in m for m in messages)
    fields = ("step", "reward_mean", "loss", "grad_norm", "clip_fraction", "entropy", "heldout_reward_mean")
    expected = [tuple(r.get(f) for f in fields) for r in read_metrics(out / "metrics.jsonl")]
    assert [tuple(r.get(f) for f in fields) for r in read_metrics(tmp_path / "metrics.jsonl")] == expected


def test_rollout_and_prompt_lengths_suit_the_attention_kernel():
    # The model reads all but a rollout row's last column: any length for XLA attention, a multiple of 128 for
    # the TPU's splash kernel (which refuses others when the program is lowered for the TPU).
    assert rollout_width(41, 24, length_multiple("xla")) == 65
    assert rollout_width(41, 24, length_multiple("splash")) == 129
    assert rollout_width(1, 128, 128) == 129
    assert (rollout_width(300, 1024, 128) - 1) % 128 == 0
    assert bucket_shape(5, 41, 24) == (8, 64, 88)
    assert bucket_shape(5, 41, 24, length_multiple=128) == (8, 128, 152)
