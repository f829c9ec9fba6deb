"""Learning rate aligned with the curriculum: warmup -> constant -> slow decay -> fast decay.

Phase i spans curriculum stage i (paper section 3.3: (i) PL-heavy data under warm-up, (ii) the diverse
mixture at a constant rate, (iii) the gradually sharpening mixture under a slow decay, (iv) the
highest-quality annealing data under a fast decay), so the phase boundaries are the stages' token budgets
turned into steps. The slow decay follows a power law in tokens seen, lr = peak * (n / n_start)^-a, in the
spirit of the Power Scheduler (Shen et al.), with `a` chosen so the phase ends at
`slow_decay_end_ratio * peak`; the fast decay then goes linearly to `final_ratio * peak`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from xgen_core.config import CURRICULUM_PHASES
from xgen_core.errors import XgenError

PHASES = CURRICULUM_PHASES


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One curriculum stage turned into steps."""

    name: str
    tokens: int  # token budget of the stage
    seq_len: int
    start_step: int
    steps: int
    tokens_per_step: int

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


def plan_stages(budgets: list[tuple[str, int, int]], batch_size: int) -> list[StagePlan]:
    """(name, token budget, seq_len) per stage -> consecutive step ranges (at least one step each)."""
    if len(budgets) != len(PHASES):
        raise XgenError(f"the curriculum needs {len(PHASES)} stages (one per LR phase), got {len(budgets)}")
    plans, start = [], 0
    for name, tokens, seq_len in budgets:
        tokens_per_step = batch_size * seq_len
        steps = max(1, math.ceil(tokens / tokens_per_step))
        plans.append(StagePlan(name, tokens, seq_len, start, steps, tokens_per_step))
        start += steps
    return plans


def tokens_before_step(plans: list[StagePlan], step):
    """Tokens consumed by the first `step` steps (works on ints and jnp arrays)."""
    total = 0
    for plan in plans:
        steps_in_stage = jnp.clip(step - plan.start_step, 0, plan.steps)
        total = total + steps_in_stage * plan.tokens_per_step
    return total


def curriculum_schedule(plans: list[StagePlan], peak_lr: float, slow_decay_end_ratio: float, final_ratio: float):
    """optax-style schedule: step (0-based, the update about to be applied) -> learning rate."""
    warmup, _, slow, fast = plans
    slow_start_tokens = max(int(tokens_before_step(plans, slow.start_step)), 1)
    slow_end_tokens = int(tokens_before_step(plans, slow.end_step))
    exponent = math.log(1.0 / slow_decay_end_ratio) / math.log(slow_end_tokens / slow_start_tokens)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warming = peak_lr * (step + 1) / warmup.steps
        tokens = jnp.maximum(tokens_before_step(plans, step), slow_start_tokens).astype(jnp.float32)
        slow_decaying = peak_lr * (tokens / slow_start_tokens) ** (-exponent)
        fast_progress = (step - fast.start_step) / fast.steps
        fast_decaying = peak_lr * (slow_decay_end_ratio + (final_ratio - slow_decay_end_ratio) * fast_progress)
        return jnp.select(
            [step < warmup.end_step, step < slow.start_step, step < fast.start_step],
            [warming, jnp.asarray(peak_lr, jnp.float32), slow_decaying],
            fast_decaying,
        )

    return schedule


def plot_schedule(schedule, plans: list[StagePlan], path: str) -> None:
    """LR against step with the curriculum stage boundaries marked (a figure for the run report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(plans[-1].end_step)
    lrs = np.asarray(schedule(steps))
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.plot(steps, lrs, color="black")
    for plan, phase in zip(plans, PHASES):
        axis.axvline(plan.start_step, color="grey", linestyle=":")
        axis.text(plan.start_step, lrs.max() * 1.02, f"{plan.name}\n{phase}", fontsize=7, va="bottom")
    axis.set_xlabel("step")
    axis.set_ylabel("learning rate")
    axis.set_ylim(0, lrs.max() * 1.25)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
