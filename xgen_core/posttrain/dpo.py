"""The `dpo` stage: direct preference optimisation against the frozen SFT model (paper section 4.2).

Each pair is two sequences, the prompt (a user turn, chat-templated) followed by the chosen or the rejected
assistant turn. A sequence's log-probability is summed over its completion tokens only. The reference model's
log-probabilities are computed once, with the init parameters, and stored in the artifact
(reference_logprobs.npz); no reference model is held while training. The loss is

    -log sigmoid(beta * ((pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)))

and the held-out pairs report the implicit reward margin (beta x the bracket) and the preference accuracy
(share of pairs whose margin is > 0).
"""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.config import DpoConfig, MeshConfig, PosttrainRunConfig, TrainConfig
from xgen_core.errors import XgenError
from xgen_core.posttrain.chat import ChatTemplate
from xgen_core.posttrain.data import Quarantine, generated_dpo_rows, is_heldout, load_rows
from xgen_core.posttrain.engine import Trainer, last_step_of, load_policy, optimizer, warmup_cosine
from xgen_core.storage import join, store_for

REFERENCE_FILE = "reference_logprobs.npz"


def completion_rows(prompt_ids: list[int], completion_ids: list[int], width: int) -> dict[str, np.ndarray]:
    """One sequence of `width` tokens: tokens, segment ids (1 real, 0 padding), positions, completion mask."""
    ids = prompt_ids + completion_ids
    row = {name: np.zeros(width, np.int32) for name in ("tokens", "segment_ids", "positions", "completion_mask")}
    row["tokens"][:len(ids)] = ids
    row["segment_ids"][:len(ids)] = 1
    row["positions"][:len(ids)] = np.arange(len(ids))
    row["completion_mask"][len(prompt_ids):len(ids)] = 1
    return row


def sequence_logprobs(logits, rows: dict):
    """Log-probability of each row's completion tokens, summed: logits (n, width - 1, vocab) -> (n,)."""
    targets = rows["tokens"][:, 1:]
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(picked * rows["completion_mask"][:, 1:], axis=-1)


def policy_logprobs(model, params, rows: dict):
    logits = model.apply({"params": params}, rows["tokens"][:, :-1], rows["positions"][:, :-1],
                         rows["segment_ids"][:, :-1])
    return sequence_logprobs(logits, rows)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """(mean loss, metrics): reward margin and preference accuracy of the batch."""
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    loss = -jax.nn.log_sigmoid(margin)
    return jnp.mean(loss), {"train_reward_margin": jnp.mean(margin), "train_pref_acc": jnp.mean(margin > 0),
                            "chosen_reward": jnp.mean(beta * (policy_chosen - ref_chosen)),
                            "rejected_reward": jnp.mean(beta * (policy_rejected - ref_rejected))}


def pair_loss(model, beta: float, fields: tuple[str, ...]):
    """loss_fn(params, batch) of the DPO step: the batch holds the chosen rows, then the rejected ones, and the
    reference log-probabilities of both."""

    def loss_fn(params, batch_rows):
        sequences = {k: batch_rows[k] for k in fields}
        logprobs = policy_logprobs(model, params, sequences)
        half = logprobs.shape[0] // 2
        return dpo_loss(logprobs[:half], logprobs[half:], batch_rows["ref_chosen"], batch_rows["ref_rejected"], beta)

    return loss_fn


def compile_target(cfg, devices, n_layers: int | None = None):
    """The DPO step for `xgen train compile`: batch_size chosen and batch_size rejected rows of max_len + 1 tokens
    as tokenize_pairs makes them (the reference log-probabilities are inputs: computed once before training)."""
    from xgen_core.posttrain.engine import compile_target as posttrain_target

    settings = cfg.dpo
    fields = ("tokens", "segment_ids", "positions", "completion_mask")
    rows = {name: (2 * settings.batch_size, settings.max_len + 1) for name in fields}
    rows.update(ref_chosen=(settings.batch_size,), ref_rejected=(settings.batch_size,))
    return posttrain_target(cfg, devices, n_layers, "dpo", lambda model: pair_loss(model, settings.beta, fields),
                            rows, 2 * settings.batch_size * settings.max_len, settings.weight_decay,
                            float_fields=("ref_chosen", "ref_rejected"))


def tokenize_pairs(rows: list[dict], template: ChatTemplate, max_len: int, quarantine: Quarantine):
    """Stacked chosen and rejected sequences, and the categories of the pairs that fit `max_len`."""
    chosen, rejected, categories = [], [], []
    for index, row in enumerate(rows):
        prompt = template.prompt([{"role": "user", "content": row["prompt"]}])
        good, bad = template.completion(row["chosen"]), template.completion(row["rejected"])
        if len(prompt) + max(len(good), len(bad)) > max_len:
            quarantine.add("too_long", f"pair {index}", {"prompt": row["prompt"][:200]})
            continue
        # One column more than the longest sequence: the model reads max_len positions (inputs drop the last
        # token), a multiple of 128 as the TPU's Pallas kernels need for the shipped max_len (xgen train compile).
        chosen.append(completion_rows(prompt, good, max_len + 1))
        rejected.append(completion_rows(prompt, bad, max_len + 1))
        categories.append(row.get("category") or "uncategorized")
    stack = lambda seqs: {k: np.stack([s[k] for s in seqs]) for k in seqs[0]} if seqs else {}
    return stack(chosen), stack(rejected), categories


def _select(rows: dict, indices) -> dict:
    return {k: v[np.asarray(indices)] for k, v in rows.items()}


def pair_batches(count: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Pair indices of `step`: epoch e in a permutation seeded by (seed, e)."""
    epoch, offset = divmod(step * batch_size, count)
    indices = []
    while len(indices) < batch_size:
        order = np.random.default_rng([seed, epoch]).permutation(count)
        indices.extend(order[offset: offset + batch_size - len(indices)])
        epoch, offset = epoch + 1, 0
    return np.asarray(indices)


def pair_logprobs(logprob_step, params, chosen: dict, rejected: dict, indices: np.ndarray):
    """Completion log-probabilities of the pairs `indices`, chosen and rejected in one batch of 2 x len(indices)
    rows: the one program the reference, the held-out evaluation and the step-0 check all go through, so before the
    first update the policy's log-probabilities equal the reference's exactly (margins 0)."""
    rows = {k: np.concatenate([chosen[k][indices], rejected[k][indices]]) for k in chosen}
    logprobs = np.asarray(jax.device_get(logprob_step(params, rows)), np.float32)
    return logprobs[:len(indices)], logprobs[len(indices):]


def batched_pair_logprobs(logprob_step, params, chosen: dict, rejected: dict, indices: np.ndarray, batch_size: int):
    """pair_logprobs over `indices` in batches of `batch_size` pairs (the last batch wraps; extra rows are cut)."""
    good, bad = [], []
    for start in range(0, len(indices), batch_size):
        batch = indices[np.arange(start, start + batch_size) % len(indices)]
        c, r = pair_logprobs(logprob_step, params, chosen, rejected, batch)
        good.append(c)
        bad.append(r)
    return np.concatenate(good)[:len(indices)], np.concatenate(bad)[:len(indices)]


def reference_logprobs(trainer: Trainer, logprob_step, chosen: dict, rejected: dict, batch_size: int) -> dict:
    """The frozen init model's log-probabilities of every chosen and rejected sequence: computed on a fresh run,
    stored in the artifact, read back on resume."""
    uri = join(trainer.out_uri, REFERENCE_FILE)
    store = store_for(uri)
    if trainer.start_step and store.exists(uri):
        with np.load(io.BytesIO(store.read_bytes(uri))) as stored:
            return {"chosen": stored["chosen"], "rejected": stored["rejected"]}
    params = jax.device_put(trainer.policy.init_params, trainer.shardings.params)
    everything = np.arange(len(chosen["tokens"]))
    good, bad = batched_pair_logprobs(logprob_step, params, chosen, rejected, everything, batch_size)
    result = {"chosen": good, "rejected": bad}
    buffer = io.BytesIO()
    np.savez(buffer, **result)
    store.write_bytes(uri, buffer.getvalue())
    return result


def dpo(init_uri: str, out_uri: str, settings: DpoConfig, train: TrainConfig, mesh: MeshConfig,
        run: PosttrainRunConfig, expected_model: dict | None = None, log=print, on_step=None) -> dict:
    policy = load_policy(init_uri, expected_model)
    template = ChatTemplate(policy.tokenizer, policy.tokenizer_config)
    quarantine = Quarantine()
    generate = settings.generate
    rows = (load_rows("dpo", settings.data, quarantine) if settings.data else
            generated_dpo_rows(settings.seed, generate.model_dump(), generate.max_operand, generate.code_share))
    chosen, rejected, categories = tokenize_pairs(rows, template, settings.max_len, quarantine)
    heldout_mask = np.array([is_heldout(i, settings.seed, settings.heldout_fraction) for i in range(len(categories))])
    train_index, heldout_index = np.flatnonzero(~heldout_mask), np.flatnonzero(heldout_mask)
    if not len(train_index) or not len(heldout_index):
        raise XgenError(f"dpo: {len(train_index)} training and {len(heldout_index)} held-out pairs after quarantine "
                        f"({dict(quarantine.counts)}): both need at least one")

    batch = settings.batch_size
    total_steps = max(1, math.ceil(settings.epochs * len(train_index) / batch))
    schedule = warmup_cosine(settings.peak_lr, int(settings.warmup_fraction * total_steps), total_steps,
                             settings.final_lr_ratio)
    tx = optimizer(train, schedule, settings.weight_decay)
    trainer = Trainer(policy, tx, schedule, mesh, run, out_uri, settings.seed, log)
    model, beta = policy.model, settings.beta

    example_rows = _select(chosen, np.arange(2 * batch) % len(categories))
    logprob_step = trainer.compile_eval(lambda params, rows: policy_logprobs(model, params, rows), example_rows)
    reference = reference_logprobs(trainer, logprob_step, chosen, rejected, batch)

    def pair_batch(indices) -> dict:
        both = {k: np.concatenate([chosen[k][indices], rejected[k][indices]]) for k in chosen}
        return {**both, "ref_chosen": reference["chosen"][indices], "ref_rejected": reference["rejected"][indices]}

    loss_fn = pair_loss(model, beta, tuple(chosen))
    example = pair_batch(train_index[:1].repeat(batch))
    train_step = trainer.compile_step(loss_fn, example)

    def do_step(state, step):
        indices = train_index[pair_batches(len(train_index), batch, settings.seed, step)]
        state, metrics = train_step(state, pair_batch(indices))
        return state, jax.device_get(metrics)

    heldout_categories = np.array(categories)[heldout_index]

    def evaluate(params):
        good, bad = batched_pair_logprobs(logprob_step, params, chosen, rejected, heldout_index, batch)
        margins = beta * ((good - reference["chosen"][heldout_index]) - (bad - reference["rejected"][heldout_index]))
        record = {"pref_acc": float(np.mean(margins > 0)), "heldout_reward_margin": float(np.mean(margins)),
                  "heldout_loss": float(np.mean(np.logaddexp(0.0, -margins)))}
        for category in sorted(set(heldout_categories)):
            record[f"pref_acc_{category}"] = float(np.mean(margins[heldout_categories == category] > 0))
        return record

    last_step = last_step_of(total_steps, run)
    counts = {"train_pairs": int(len(train_index)), "heldout_pairs": int(len(heldout_index)),
              "quarantined": sum(quarantine.counts.values()),
              **{f"quarantined_{k}": v for k, v in sorted(quarantine.counts.items())}}
    for category in sorted(set(categories)):
        counts[f"train_{category}"] = int(sum(categories[i] == category for i in train_index))
        counts[f"heldout_{category}"] = int(sum(categories[i] == category for i in heldout_index))
    trainer.write_json("data.json", counts)
    (trainer.out / "quarantine.jsonl").write_text(quarantine.jsonl())
    log(f"dpo: {counts['train_pairs']} pairs, {counts['heldout_pairs']} held out, {counts['quarantined']} "
        f"quarantined; beta {beta}; steps {trainer.start_step}->{last_step} of {total_steps}")
    records = trainer.train(last_step, do_step, evaluate, on_step)
    evaluated = [r for r in records if "pref_acc" in r]
    before, after = evaluated[0], evaluated[-1]
    keys = [k for k in after if k.startswith(("pref_acc", "heldout_"))]
    return {"counts": {**counts, "steps": last_step, "total_steps": total_steps},
            "complete": last_step >= total_steps,
            "metrics": {"heldout_before": {k: before.get(k) for k in keys},
                        "heldout_after": {k: after[k] for k in keys}}}


def run(ctx) -> dict:
    """The `dpo` stage: preference-tunes its `init` upstream (sft, or --init URI) in its artifact directory."""
    cfg = ctx.cfg
    return dpo(ctx.inputs["sft"], ctx.output, cfg.dpo, cfg.train, cfg.train_run.mesh, cfg.posttrain_run,
               expected_model=cfg.section_dump("model"), log=ctx.log)
