"""Verifiable rewards for GRPO, by task kind: a small registry.

    math  the completion's final answer is equivalent to the reference (math-verify: parse, then verify)
    code  the completion, run with the task's tests in the code sandbox, exits cleanly (tests pass = 1)

A row's kind follows from its fields: {"answer"} is math, {"tests"} is code.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from xgen_core.evals.sandbox import Limits, run_code

FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


@functools.lru_cache(maxsize=65536)
def math_reward(answer: str, completion: str) -> float:
    from math_verify import parse, verify

    gold = parse(answer)
    if not gold:  # a bare number parses; fall back to a dollar-wrapped one (LaTeX)
        gold = parse(f"${answer}$")
    return 1.0 if verify(gold, parse(completion)) else 0.0


def completion_code(completion: str) -> str:
    """The program in a completion: the first fenced block if there is one, else the whole text."""
    match = FENCE.search(completion)
    return match.group(1) if match else completion


def code_reward(tests: str, completion: str, timeout_s: float = 10.0) -> float:
    result = run_code(completion_code(completion), tests, Limits(timeout_s=timeout_s))
    return 1.0 if result.passed else 0.0


def task_kind(row: dict) -> str:
    return "code" if row.get("tests") else "math"


REWARDS: dict[str, Callable[[dict, str, float], float]] = {
    "math": lambda row, completion, timeout_s: math_reward(str(row["answer"]).strip(), completion),
    "code": lambda row, completion, timeout_s: code_reward(row["tests"], completion, timeout_s),
}


def reward(row: dict, completion: str, code_timeout_s: float = 10.0) -> float:
    return REWARDS[task_kind(row)](row, completion, code_timeout_s)
