import json

import numpy as np
import pytest

from xgen_core.cli import main
from xgen_core.config import available_profiles, load_config
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


def profile_schedule(cfg):
    """What a pretraining run of the profile follows (spelled out here, not through `schedule_for`)."""
    plans = plan_stages([(name, tokens, cfg.pack.seq_len) for name, tokens in cfg.curriculum().items()],
                        cfg.train.batch_size)
    train = cfg.train
    return plans, curriculum_schedule(plans, train.peak_lr, train.slow_decay_end_ratio, train.final_lr_ratio)


def test_schedule_for_is_the_profile_schedule():
    from xgen_core.train.schedule import schedule_for

    cfg = load_config("tiny")
    plans, schedule = schedule_for(cfg.curriculum(), cfg.pack.seq_len, cfg.train)
    expected_plans, expected = profile_schedule(cfg)
    assert plans == expected_plans
    np.testing.assert_array_equal(schedule(np.arange(101)), expected(np.arange(101)))


@pytest.mark.parametrize("profile", available_profiles())
def test_every_shipped_profile_never_rises_after_warmup_and_ends_phases_at_their_ratios(profile):
    cfg = load_config(profile)
    plans, schedule = profile_schedule(cfg)
    lr = np.asarray(schedule(np.arange(plans[-1].end_step + 1)))
    after_warmup = lr[plans[0].end_step - 1:]
    assert np.all(np.diff(after_warmup) <= 0), f"rises at step {plans[0].end_step - 1 + np.argmax(np.diff(after_warmup))}"
    peak = cfg.train.peak_lr
    assert lr[plans[2].start_step] == pytest.approx(peak, rel=1e-6)
    assert lr[plans[2].end_step] == pytest.approx(cfg.train.slow_decay_end_ratio * peak, rel=1e-5)
    assert lr[plans[3].end_step] == pytest.approx(cfg.train.final_lr_ratio * peak, abs=1e-9 * peak)


def test_paper_scale_token_counts_are_exact_integers():
    plans, _ = profile_schedule(load_config("xgen-small-4b"))
    tokens_per_step = 1024 * 4096
    assert tokens_before_step(plans, plans[2].start_step) == 2 * 715_256 * tokens_per_step  # > 2**31
    assert tokens_before_step(plans, plans[-1].end_step) == plans[-1].end_step * tokens_per_step


def test_ratios_that_would_make_the_rate_rise_are_refused():
    with pytest.raises(XgenError, match="final_lr_ratio"):
        curriculum_schedule(plans(), PEAK, slow_decay_end_ratio=0.1, final_ratio=0.2)
    with pytest.raises(XgenError, match="slow_decay_end_ratio"):
        curriculum_schedule(plans(), PEAK, slow_decay_end_ratio=0.0, final_ratio=0.0)


@pytest.mark.parametrize("profile", ["tiny", "xgen-small-4b", "xgen-small-9b"])
def test_schedule_command_prints_phases_and_samples_over_the_whole_run(profile, capsys):
    main(["train", "schedule", "--profile", profile, "--json"])
    shown = json.loads(capsys.readouterr().out)
    phases, samples = shown["phases"], shown["samples"]
    assert [p["name"] for p in phases] == ["warmup", "constant", "slow_decay", "fast_decay"]
    assert {"name", "start_step", "end_step", "lr_start", "lr_end"} <= set(phases[0])
    assert all(a["end_step"] == b["start_step"] for a, b in zip(phases, phases[1:]))
    steps, rates = np.array([s for s, _ in samples]), np.array([lr for _, lr in samples])
    total_steps = phases[-1]["end_step"]
    assert len(samples) >= min(200, total_steps + 1) and steps[0] == 0 and steps[-1] == total_steps
    assert rates[-1] == pytest.approx(phases[-1]["lr_end"])
    assert np.all(np.diff(steps) > 0)
    assert np.all(np.diff(rates[steps >= phases[0]["end_step"] - 1]) <= 0)
    cfg = load_config(profile)
    assert phases[2]["lr_end"] == pytest.approx(cfg.train.slow_decay_end_ratio * cfg.train.peak_lr, rel=1e-5)
    main(["train", "schedule", "--profile", profile, "train.peak_lr=0.001"])
    table = capsys.readouterr().out
    assert "slow_decay" in table and "stage3_quality" in table and "1.000e-03" in table
