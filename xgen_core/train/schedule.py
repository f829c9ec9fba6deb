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


def tokens_before_step(plans: list[StagePlan], step: int) -> int:
    """Tokens consumed by the first `step` steps, as an exact Python integer (8T tokens overflow int32)."""
    step = int(step)
    return sum(min(max(step - plan.start_step, 0), plan.steps) * plan.tokens_per_step for plan in plans)


def curriculum_schedule(plans: list[StagePlan], peak_lr: float, slow_decay_end_ratio: float, final_ratio: float):
    """optax-style schedule: step (0-based, the update about to be applied) -> learning rate.

    Every phase boundary and token count is an exact Python integer; inside the jitted function only
    step offsets within a phase (small) meet floating point, so the rate is monotone non-increasing after
    the warm-up at any scale. `schedule(plan.end_step)` is the rate a phase ends at (the next one's start;
    for the fast decay, `final_ratio * peak`).
    """
    if not 0 < slow_decay_end_ratio <= 1 or not 0 <= final_ratio <= slow_decay_end_ratio:
        raise XgenError(f"the LR ratios must satisfy 0 <= final_lr_ratio ({final_ratio}) <= slow_decay_end_ratio "
                        f"({slow_decay_end_ratio}) <= 1 and slow_decay_end_ratio > 0")
    warmup, _, slow, fast = plans
    slow_start_tokens = tokens_before_step(plans, slow.start_step)
    slow_end_tokens = tokens_before_step(plans, slow.end_step)
    exponent = math.log(1.0 / slow_decay_end_ratio) / math.log(slow_end_tokens / slow_start_tokens)
    # tokens / slow_start_tokens = 1 + (step - slow.start_step) * growth_per_step, all within the slow phase
    growth_per_step = slow.tokens_per_step / slow_start_tokens

    def schedule(step):
        step = jnp.asarray(step)
        warming = peak_lr * (step.astype(jnp.float32) + 1) / warmup.steps
        slow_offset = jnp.clip(step - slow.start_step, 0, slow.steps).astype(jnp.float32)
        slow_decaying = peak_lr * jnp.exp(-exponent * jnp.log1p(slow_offset * growth_per_step))
        fast_progress = jnp.clip(step - fast.start_step, 0, fast.steps).astype(jnp.float32) / fast.steps
        fast_decaying = peak_lr * (slow_decay_end_ratio + (final_ratio - slow_decay_end_ratio) * fast_progress)
        return jnp.select(
            [step < warmup.end_step, step < slow.start_step, step < fast.start_step],
            [warming, jnp.full(jnp.shape(step), peak_lr, jnp.float32), slow_decaying],
            fast_decaying,
        ).astype(jnp.float32)

    return schedule


def schedule_for(stage_tokens: dict[str, int], seq_len: int, train) -> tuple[list[StagePlan], object]:
    """The plans and the schedule a pretraining run with `train` (config section) follows."""
    plans = plan_stages([(name, int(tokens), seq_len) for name, tokens in stage_tokens.items()], train.batch_size)
    schedule = curriculum_schedule(plans, train.peak_lr, train.slow_decay_end_ratio, train.final_lr_ratio)
    return plans, schedule


def phase_table(plans: list[StagePlan], schedule) -> list[dict]:
    """One row per LR phase: its curriculum stage, steps [start, end), tokens, and the rate at both ends."""
    rows = []
    for phase, plan in zip(PHASES, plans):
        rows.append({
            "name": phase, "stage": plan.name, "start_step": plan.start_step, "end_step": plan.end_step,
            "tokens": plan.steps * plan.tokens_per_step,
            "lr_start": float(schedule(plan.start_step)), "lr_end": float(schedule(plan.end_step)),
        })
    return rows


def sample_steps(plans: list[StagePlan], count: int = 256) -> np.ndarray:
    """`count` steps spread evenly over the run (every step of a shorter run) plus each phase's first and last
    step and the end of the run (the final rate), ascending."""
    total = plans[-1].end_step
    even = np.linspace(0, total, num=min(count, total + 1)).round().astype(np.int64)
    edges = [s for plan in plans for s in (plan.start_step, plan.end_step - 1)]
    return np.unique(np.concatenate([even, np.asarray(edges, np.int64)]))


def schedule_samples(plans: list[StagePlan], schedule, count: int = 256) -> list[list]:
    steps = sample_steps(plans, count)
    return [[int(step), float(lr)] for step, lr in zip(steps, np.asarray(schedule(steps)))]


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


def warmup_decay_schedule(peak_lr: float, warmup_steps: int, total_steps: int, final_ratio: float):
    """Length extension's schedule: linear warm-up over `warmup_steps`, then linear decay to `final_ratio * peak`
    at `total_steps` (a short warm-up suits training that continues from trained parameters)."""
    warmup_steps = min(warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step):
        step = jnp.asarray(step)
        warming = peak_lr * (step.astype(jnp.float32) + 1) / warmup_steps
        progress = jnp.clip(step - warmup_steps, 0, decay_steps).astype(jnp.float32) / decay_steps
        decaying = peak_lr * (1.0 + (final_ratio - 1.0) * progress)
        return jnp.where(step < warmup_steps, warming, decaying).astype(jnp.float32)

    return schedule
