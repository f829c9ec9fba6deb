import numpy as np
import pytest

from xgen_core.errors import XgenError
from xgen_core.train.schedule import curriculum_schedule, plan_stages, tokens_before_step

PEAK = 1e-3


def plans():
    # batch 4 x seq 32 = 128 tokens per step -> 10, 30, 40, 20 steps
    return plan_stages([("pl", 1280, 32), ("diverse", 3840, 32), ("sharpen", 5120, 32), ("anneal", 2560, 32)], 4)


def lrs():
    schedule = curriculum_schedule(plans(), PEAK, slow_decay_end_ratio=0.25, final_ratio=0.01)
    return np.asarray(schedule(np.arange(plans()[-1].end_step)))


def test_stage_boundaries_follow_token_budgets():
    assert [(p.start_step, p.steps) for p in plans()] == [(0, 10), (10, 30), (40, 40), (80, 20)]
    assert int(tokens_before_step(plans(), 45)) == 45 * 128


def test_four_phases_in_order():
    lr = lrs()
    warmup, constant, slow, fast = lr[:10], lr[10:40], lr[40:80], lr[80:]
    assert np.all(np.diff(warmup) > 0) and warmup[-1] == pytest.approx(PEAK)
    np.testing.assert_allclose(constant, PEAK)
    assert slow[0] == pytest.approx(PEAK) and np.all(np.diff(slow) < 0)
    assert np.all(np.diff(fast) < 0) and fast[-1] == pytest.approx(PEAK * (0.25 + (0.01 - 0.25) * 19 / 20))


def test_slow_decay_is_a_power_law_in_tokens_and_joins_the_fast_decay():
    lr = lrs()
    tokens = np.arange(40, 80) * 128.0
    log_slope = np.diff(np.log(lr[40:80])) / np.diff(np.log(tokens))
    np.testing.assert_allclose(log_slope, log_slope[0], rtol=1e-3)  # straight line on log-log axes
    assert lr[80] == pytest.approx(0.25 * PEAK, rel=1e-5)  # fast decay starts where slow decay ends
    assert abs(lr[79] - lr[80]) < abs(lr[80] - lr[81]) * 3  # no jump at the boundary
    # the fast decay drops faster per step than the slow decay did
    assert (lr[80] - lr[81]) > (lr[78] - lr[79])


def test_curriculum_must_have_four_stages():
    with pytest.raises(XgenError, match="4 stages"):
        plan_stages([("a", 100, 8)], 2)
