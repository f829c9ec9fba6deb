"""DPO: the loss is the standard one over completion-token log-probabilities, the reference log-probabilities are
the frozen init model's (computed once, stored), and a killed run resumes to the same losses."""

import io

import jax
import numpy as np
import pytest

from xgen_core.infer.model_artifact import load_trained_model
from xgen_core.posttrain.chat import ChatTemplate
from xgen_core.posttrain.data import Quarantine, generated_dpo_rows
from xgen_core.posttrain.dpo import REFERENCE_FILE, dpo_loss, policy_logprobs, tokenize_pairs
from xgen_core.train.metrics import read_metrics

from tests.posttrain.fixtures import GENERATE, dpo_config, kill_then_resume, run_stage_function


def test_dpo_loss_is_minus_log_sigmoid_of_the_scaled_log_ratio_difference():
    pc, pr, rc, rr = np.array([-3.0, -5.0]), np.array([-4.0, -2.0]), np.array([-3.5, -4.0]), np.array([-3.0, -3.0])
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margins = 0.5 * ((pc - rc) - (pr - rr))  # [0.75, -1.0]
    assert float(loss) == pytest.approx(np.mean(np.log1p(np.exp(-margins))), rel=1e-6)
    assert float(metrics["train_pref_acc"]) == 0.5
    assert float(metrics["train_reward_margin"]) == pytest.approx(margins.mean())


@pytest.fixture(scope="module")
def uninterrupted(init_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    return out, run_stage_function("dpo", init_artifact, str(out))


def test_reference_logprobs_are_the_init_models_over_completion_tokens(init_artifact, uninterrupted):
    out, result = uninterrupted
    trained = load_trained_model(init_artifact)
    template = ChatTemplate(trained.tokenizer, trained.tokenizer_config)
    settings = dpo_config()
    rows = generated_dpo_rows(settings.seed, GENERATE.model_dump(), GENERATE.max_operand, GENERATE.code_share)
    chosen, rejected, _ = tokenize_pairs(rows, template, settings.max_len, Quarantine())
    stored = np.load(io.BytesIO((out / REFERENCE_FILE).read_bytes()))
    first = {k: v[:4] for k, v in chosen.items()}
    expected = jax.jit(lambda p, r: policy_logprobs(trained.model, p, r))(trained.params, first)
    np.testing.assert_allclose(stored["chosen"][:4], np.asarray(expected), rtol=1e-5)
    assert stored["rejected"].shape == stored["chosen"].shape == (len(chosen["tokens"]),)
    # a prompt token's probability is no part of a completion's log-probability
    assert (chosen["completion_mask"].sum(1) < (chosen["segment_ids"] > 0).sum(1)).all()


def test_dpo_reports_heldout_preference_accuracy_from_a_zero_margin(uninterrupted):
    out, result = uninterrupted
    records = read_metrics(out / "metrics.jsonl")
    # before the first step the policy is the reference, scored by the same program: margins exactly 0
    assert records[0]["step"] == 0 and records[0]["heldout_reward_margin"] == 0.0 and records[0]["pref_acc"] == 0.0
    assert result["metrics"]["heldout_after"]["pref_acc"] > 0.5
    assert {"pref_acc_general", "pref_acc_safety", "pref_acc_reasoning"} <= set(records[-1])


def test_killed_dpo_resumes_with_identical_losses(init_artifact, uninterrupted, tmp_path):
    out, _ = uninterrupted
    messages = kill_then_resume("dpo", init_artifact, tmp_path, kill_step=3)
    assert any("resuming from the checkpoint of step 2" in m for m in messages)
    fields = ("step", "loss", "grad_norm", "lr", "train_pref_acc", "pref_acc", "heldout_reward_margin")
    expected = [tuple(r.get(f) for f in fields) for r in read_metrics(out / "metrics.jsonl")]
    assert [tuple(r.get(f) for f in fields) for r in read_metrics(tmp_path / "metrics.jsonl")] == expected
