"""The `grpo` stage: group relative policy optimisation with verifiable rewards (paper section 4.3).

Each step samples G completions for each of `prompts_per_step` prompts with the KV-cache sampler
(temperature / top-p from config), scores them with the reward registry (math through math-verify, code
through the sandbox), and turns rewards into group-relative advantages, (r - mean of the group) / (std of the
group + eps). The policy then takes `updates_per_batch` optimizer steps on the clipped-ratio objective

    -sum_tokens min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) / (completion tokens in the batch)

(token-level normalisation, as DAPO and TRL's "dapo" loss), with log-probabilities of logits / temperature, the
distribution the rollouts were drawn from. The KL term to the init model is added only when kl_coef != 0; at 0
(the paper) no reference model is held. Rollouts depend on the parameters and a key folded from (seed, step), so
a resumed run redraws exactly the rollouts the killed one drew.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.config import GrpoConfig, MeshConfig, PosttrainRunConfig, TrainConfig
from xgen_core.errors import XgenError
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate
from xgen_core.posttrain.chat import ChatTemplate
from xgen_core.posttrain.data import Quarantine, generated_grpo_rows, load_rows
from xgen_core.posttrain.engine import Trainer, last_step_of, load_policy, optimizer, warmup_cosine
from xgen_core.posttrain.rewards import reward, task_kind


def group_advantages(rewards: np.ndarray, eps: float) -> np.ndarray:
    """rewards (prompts, G) -> (r - group mean) / (group std + eps), same shape."""
    mean = rewards.mean(axis=1, keepdims=True)
    return (rewards - mean) / (rewards.std(axis=1, keepdims=True) + eps)


def token_logprobs(model, params, rows: dict, temperature: float):
    """Per-token log-probabilities of the targets under logits / temperature, and the full log-softmax."""
    logits = model.apply({"params": params}, rows["tokens"][:, :-1], rows["positions"][:, :-1],
                         rows["segment_ids"][:, :-1]) / temperature
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logprobs, rows["tokens"][:, 1:, None], axis=-1)[..., 0]
    return picked, logprobs


def clipped_objective(logprobs, old_logprobs, advantages, mask, clip_eps: float):
    """(loss normalised over all completion tokens of the batch, clip fraction)."""
    ratio = jnp.exp(logprobs - old_logprobs)
    advantages = advantages[:, None]
    per_token = -jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    tokens = jnp.maximum(jnp.sum(mask), 1.0)
    clipped = (jnp.abs(ratio - 1) > clip_eps) & (mask > 0)
    return jnp.sum(per_token * mask) / tokens, jnp.sum(clipped) / tokens


def kl_penalty(logprobs, ref_logprobs, mask):
    """The k3 estimator of KL(policy || reference), per completion token, averaged."""
    delta = ref_logprobs - logprobs
    return jnp.sum((jnp.exp(delta) - delta - 1) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def rollout_rows(prompts: list[list[int]], completions: list[list[int]], width: int) -> dict[str, np.ndarray]:
    """Prompt + completion sequences, right-padded to `width`; completion_mask marks the sampled tokens."""
    rows = {name: np.zeros((len(prompts), width), np.int32)
            for name in ("tokens", "segment_ids", "positions", "completion_mask")}
    for r, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids = prompt + completion
        rows["tokens"][r, :len(ids)] = ids
        rows["segment_ids"][r, :len(ids)] = 1
        rows["positions"][r, :len(ids)] = np.arange(len(ids))
        rows["completion_mask"][r, len(prompt):len(ids)] = 1
    return rows


def prompt_order(count: int, per_step: int, seed: int, step: int) -> np.ndarray:
    epoch, offset = divmod(step * per_step, count)
    indices = []
    while len(indices) < per_step:
        order = np.random.default_rng([seed, epoch]).permutation(count)
        indices.extend(order[offset: offset + per_step - len(indices)])
        epoch, offset = epoch + 1, 0
    return np.asarray(indices)


class Rollouts:
    """Sampling and scoring: G completions per prompt from the current parameters."""

    def __init__(self, policy, template: ChatTemplate, settings: GrpoConfig, mesh):
        self.policy, self.template, self.settings, self.mesh = policy, template, settings, mesh
        self.config = SamplingConfig(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                     top_p=settings.top_p, stop_tokens=template.stop_tokens)

    def sample(self, params, rows: list[dict], prompts: list[list[int]], key, group: int):
        """Completions (ids), their texts and rewards, G consecutive rows per prompt."""
        spec = self.policy.model.spec
        repeated = [p for p in prompts for _ in range(group)]
        generations = generate(decoder_weights(params, spec), spec, repeated, self.config, key,
                               compute_dtype=jnp.dtype(self.policy.model.compute_dtype),
                               attention_impl=self.policy.model.attention_impl, mesh=self.mesh)
        completions = [g.completion_ids for g in generations]
        texts = [self.template.decode_completion(ids) for ids in completions]
        rewards = np.array([reward(rows[i // group], text, self.settings.code_timeout_s)
                            for i, text in enumerate(texts)], np.float32)
        return completions, texts, rewards


def load_tasks(settings: GrpoConfig, template: ChatTemplate, max_seq_len: int, quarantine: Quarantine):
    rows = (load_rows("grpo", settings.data, quarantine) if settings.data else
            generated_grpo_rows(settings.seed, settings.math_prompts + settings.heldout_prompts,
                                settings.code_prompts, settings.max_operand))
    kept, prompts = [], []
    for index, row in enumerate(rows):
        ids = template.prompt([{"role": "user", "content": row["prompt"]}])
        if len(ids) + settings.max_new_tokens > max_seq_len:
            quarantine.add("too_long", f"row {index}", {"prompt": row["prompt"][:200]})
            continue
        kept.append(row)
        prompts.append(ids)
    if len(kept) <= settings.heldout_prompts:
        raise XgenError(f"grpo: {len(kept)} usable prompts after quarantine ({dict(quarantine.counts)}), "
                        f"need more than the {settings.heldout_prompts} held out")
    return kept, prompts


def split_tasks(rows: list[dict], heldout_prompts: int) -> tuple[list[int], list[int], int]:
    """(held-out indices, training indices, training rows dropped because a held-out row has their prompt).

    Rows come shuffled from the seed: the first `heldout_prompts` are held out. Small task spaces repeat prompts
    (single-digit arithmetic has 200), so a training row that asks a held-out question is left out, or the
    held-out reward would measure memorised answers."""
    heldout = list(range(min(heldout_prompts, len(rows))))
    asked = {rows[i]["prompt"] for i in heldout}
    rest = range(len(heldout), len(rows))
    train_tasks = [i for i in rest if rows[i]["prompt"] not in asked]
    if not train_tasks:
        raise XgenError(f"grpo: every one of the {len(rest)} training prompts repeats a held-out prompt; "
                        f"generate more prompts or a larger task space (grpo.max_operand)")
    return heldout, train_tasks, len(rest) - len(train_tasks)


def grpo(init_uri: str, out_uri: str, settings: GrpoConfig, train: TrainConfig, mesh: MeshConfig,
         run: PosttrainRunConfig, expected_model: dict | None = None, log=print, on_step=None) -> dict:
    policy = load_policy(init_uri, expected_model)
    template = ChatTemplate(policy.tokenizer, policy.tokenizer_config)
    quarantine = Quarantine()
    rows, prompts = load_tasks(settings, template, policy.model.spec.max_seq_len, quarantine)
    heldout, train_tasks, leaked = split_tasks(rows, settings.heldout_prompts)
    width = max(map(len, prompts)) + settings.max_new_tokens
    group = settings.group_size

    updates = settings.steps * settings.updates_per_batch
    schedule = warmup_cosine(settings.peak_lr, int(settings.warmup_fraction * updates), updates, 1.0)
    tx = optimizer(train, schedule, settings.weight_decay)
    trainer = Trainer(policy, tx, schedule, mesh, run, out_uri, settings.seed, log)
    model, temperature, kl_coef = policy.model, settings.temperature, settings.kl_coef
    reference_params = jax.device_put(policy.init_params, trainer.shardings.params) if kl_coef else None
    sampler = Rollouts(policy, template, settings, trainer.mesh)

    def loss_fn(params, batch):
        mask = batch["completion_mask"][:, 1:].astype(jnp.float32)
        logprobs, full = token_logprobs(model, params, batch, temperature)
        loss, clip_fraction = clipped_objective(logprobs, batch["old_logprobs"], batch["advantages"], mask,
                                                settings.clip_eps)
        entropy = -jnp.sum(jnp.exp(full) * full, axis=-1)
        metrics = {"clip_fraction": clip_fraction,
                   "entropy": jnp.sum(entropy * mask) / jnp.maximum(jnp.sum(mask), 1.0)}
        if kl_coef:  # a Python constant: at 0 the term is not even traced
            kl = kl_penalty(logprobs, batch["ref_logprobs"], mask)
            loss, metrics["kl"] = loss + kl_coef * kl, kl
        return loss, metrics

    n_rollouts = settings.prompts_per_step * group
    example = {**rollout_rows([[0]] * n_rollouts, [[0]] * n_rollouts, width),
               "old_logprobs": np.zeros((n_rollouts, width - 1), np.float32),
               "advantages": np.zeros(n_rollouts, np.float32)}
    if kl_coef:
        example["ref_logprobs"] = example["old_logprobs"]
    train_step = trainer.compile_step(loss_fn, example)
    sequences_example = rollout_rows([[0]] * n_rollouts, [[0]] * n_rollouts, width)
    logprob_step = trainer.compile_eval(lambda params, r: token_logprobs(model, params, r, temperature)[0],
                                        sequences_example)
    base_key = jax.random.key(settings.seed)

    def do_step(state, step):
        picked = [train_tasks[i] for i in prompt_order(len(train_tasks), settings.prompts_per_step,
                                                       settings.seed, step)]
        step_prompts = [prompts[i] for i in picked]
        started = time.perf_counter()
        completions, _, rewards = sampler.sample(state.params, [rows[i] for i in picked], step_prompts,
                                                 jax.random.fold_in(base_key, step), group)
        sampled = time.perf_counter()
        advantages = group_advantages(rewards.reshape(-1, group), settings.advantage_eps).reshape(-1)
        sequences = rollout_rows([p for p in step_prompts for _ in range(group)], completions, width)
        batch = {**sequences, "old_logprobs": np.asarray(jax.device_get(logprob_step(state.params, sequences))),
                 "advantages": advantages.astype(np.float32)}
        if kl_coef:
            batch["ref_logprobs"] = np.asarray(jax.device_get(logprob_step(reference_params, sequences)))
        totals = {}
        for _ in range(settings.updates_per_batch):
            state, metrics = train_step(state, batch)
            for name, value in jax.device_get(metrics).items():
                totals[name] = totals.get(name, 0.0) + float(value) / settings.updates_per_batch
        finished = time.perf_counter()
        grouped = rewards.reshape(-1, group)
        kinds = [task_kind(rows[i]) for i in picked]
        record = {**totals, "reward_mean": float(rewards.mean()), "pass_rate": float(np.mean(rewards >= 1.0)),
                  "reward_std_in_group": float(grouped.std(axis=1).mean()),
                  "groups_without_signal": float(np.mean(grouped.std(axis=1) == 0)),
                  "response_length": float(np.mean([len(c) for c in completions])),
                  "rollout_tokens": int(sum(map(len, completions))), "rollout_seconds": sampled - started,
                  "update_seconds": finished - sampled}
        for kind in sorted(set(kinds)):
            chosen = np.array(kinds) == kind
            record[f"reward_mean_{kind}"] = float(grouped[chosen].mean())
        return state, record

    eval_key = jax.random.fold_in(base_key, 10**9)

    def evaluate(params):
        _, _, rewards = sampler.sample(params, [rows[i] for i in heldout], [prompts[i] for i in heldout],
                                       eval_key, group)
        return {"heldout_reward_mean": float(rewards.mean()), "heldout_pass_rate": float(np.mean(rewards >= 1.0))}

    last_step = last_step_of(settings.steps, run)
    kinds = [task_kind(row) for row in rows]
    counts = {"train_prompts": len(train_tasks), "heldout_prompts": len(heldout),
              "train_prompts_dropped_as_heldout": leaked,
              "math_prompts": kinds.count("math"), "code_prompts": kinds.count("code"),
              "quarantined": sum(quarantine.counts.values()),
              **{f"quarantined_{k}": v for k, v in sorted(quarantine.counts.items())}}
    trainer.write_json("data.json", counts)
    (trainer.out / "quarantine.jsonl").write_text(quarantine.jsonl())
    log(f"grpo: {counts['train_prompts']} prompts ({counts['math_prompts']} math, {counts['code_prompts']} code), "
        f"G {group}, {settings.prompts_per_step} prompts a step; steps {trainer.start_step}->{last_step} of "
        f"{settings.steps}")
    records = trainer.train(last_step, do_step, evaluate, on_step)
    evaluated = [r for r in records if "heldout_reward_mean" in r]
    trained = [r for r in records if "reward_mean" in r]
    return {"counts": {**counts, "steps": last_step, "total_steps": settings.steps},
            "complete": last_step >= settings.steps,
            "metrics": {"heldout_reward_before": evaluated[0]["heldout_reward_mean"],
                        "heldout_reward_after": evaluated[-1]["heldout_reward_mean"],
                        "train_reward_first": trained[0]["reward_mean"] if trained else None,
                        "train_reward_last": trained[-1]["reward_mean"] if trained else None}}


def run(ctx) -> dict:
    """The `grpo` stage: RL from verifiable rewards on its `init` upstream (dpo, or --init URI)."""
    cfg = ctx.cfg
    return grpo(ctx.inputs["dpo"], ctx.output, cfg.grpo, cfg.train, cfg.train_run.mesh, cfg.posttrain_run,
                expected_model=cfg.section_dump("model"), log=ctx.log)
