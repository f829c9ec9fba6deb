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

import dataclasses
import math
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xgen_core.config import GrpoConfig, MeshConfig, PosttrainRunConfig, TrainConfig
from xgen_core.errors import XgenError
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate, round_up
from xgen_core.model.attention import length_multiple, resolve_impl
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


def policy_loss(model, settings: GrpoConfig):
    """(params, batch) -> (loss, metrics) of the policy update: the clipped objective, plus the KL term when
    kl_coef != 0."""
    temperature, kl_coef = settings.temperature, settings.kl_coef

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

    return loss_fn


def rollout_width(longest_prompt: int, max_new_tokens: int, multiple: int) -> int:
    """Columns of a rollout row (prompt + completion, right-padded): the model reads all but the last, a length
    that divides by `multiple`, what the attention kernel accepts (attention.length_multiple: 128 for the TPU's
    Pallas kernels)."""
    return round_up(longest_prompt + max_new_tokens - 1, multiple) + 1


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
                                settings.code_prompts, settings.max_operand, settings.math_kinds))
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
    width = rollout_width(max(map(len, prompts)), settings.max_new_tokens,
                          length_multiple(policy.model.attention_impl))
    group = settings.group_size

    updates = settings.steps * settings.updates_per_batch
    schedule = warmup_cosine(settings.peak_lr, int(settings.warmup_fraction * updates), updates, 1.0)
    tx = optimizer(train, schedule, settings.weight_decay)
    trainer = Trainer(policy, tx, schedule, mesh, run, out_uri, settings.seed, log)
    model, temperature, kl_coef = policy.model, settings.temperature, settings.kl_coef
    reference_params = jax.device_put(policy.init_params, trainer.shardings.params) if kl_coef else None
    sampler = Rollouts(policy, template, settings, trainer.mesh)

    loss_fn = policy_loss(model, settings)
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


# The longest prompt the compile check assumes: rollouts are this + grpo.max_new_tokens wide. The generated math and
# code prompts (chat template included) are far shorter; a data set with longer prompts compiles wider programs.
COMPILE_PROMPT_LEN = 256


def compile_target(cfg, devices, n_layers: int | None = None):
    """GRPO for `xgen train compile`: the policy update over prompts_per_step x group_size rollouts of
    COMPILE_PROMPT_LEN + max_new_tokens tokens, and the sampler's prefill and decode programs for those rollouts
    (`programs`, compiled beside it), each with the training state resident on the chip."""
    from xgen_core.posttrain.engine import compile_target as posttrain_target
    from xgen_core.posttrain.engine import posttrain_model

    settings = cfg.grpo
    rows = settings.prompts_per_step * settings.group_size
    model = posttrain_model(cfg, devices, n_layers)
    # As wide as the configured kernel and the platform's own kernel need: the FLOPs count compiles copies of the
    # step with XLA attention (compile.compiled_flops_per_step), which must read the same rows.
    multiple = max(length_multiple(model.attention_impl), length_multiple(resolve_impl("auto", devices[0].platform)))
    width = rollout_width(COMPILE_PROMPT_LEN, settings.max_new_tokens, multiple)
    fields = {name: (rows, width) for name in ("tokens", "segment_ids", "positions", "completion_mask")}
    fields.update(old_logprobs=(rows, width - 1), advantages=(rows,))
    if settings.kl_coef:
        fields["ref_logprobs"] = (rows, width - 1)
    target = posttrain_target(cfg, devices, n_layers, "grpo", lambda m: policy_loss(m, settings), fields,
                              rows * (width - 1), settings.weight_decay,
                              float_fields=("old_logprobs", "advantages", "ref_logprobs"))
    return dataclasses.replace(target, programs=sampler_compile_targets(model, target, rows, settings))


def sampler_compile_targets(model, policy_step, rows: int, settings: GrpoConfig) -> tuple:
    """(name, CompileTarget) of the rollout sampler's prefill and decode for `rows` prompts of COMPILE_PROMPT_LEN
    tokens, over the policy step's parameters as the trainer hands them to `generate` (same arrays, same shardings)."""
    from xgen_core.infer import sampler
    from xgen_core.model.info import forward_flops_per_token
    from xgen_core.train import mesh as mesh_lib
    from xgen_core.train.compile import CompileTarget

    state = policy_step.args[0]
    mesh = jax.tree.leaves(state.params)[0].sharding.mesh
    spec, compute_dtype = model.spec, jnp.dtype(model.compute_dtype)
    batch_shards = math.prod(mesh.shape[axis] for axis in mesh_lib.BATCH_AXES)
    batch, prompt_len, cache_len = sampler.bucket_shape(rows, COMPILE_PROMPT_LEN, settings.max_new_tokens,
                                                        batch_shards, length_multiple(model.attention_impl))
    weights = _abstract_decoder_weights(state.params, spec, mesh)
    replicated = mesh_lib.replicated(mesh)
    prompts = [jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32, sharding=replicated)] * 3
    cache_sharding = NamedSharding(mesh, nn.logical_to_mesh_axes(sampler.CACHE_AXES, mesh_lib.LOGICAL_RULES))
    cache_shape = (spec.n_layers, batch, cache_len, spec.n_kv_heads, spec.head_dim)
    cache = (jax.ShapeDtypeStruct(cache_shape, compute_dtype, sharding=cache_sharding),) * 2 + (
        jax.ShapeDtypeStruct((batch, cache_len), jnp.int32, sharding=replicated),)
    scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)  # noqa: E731
    key = jax.eval_shape(lambda: jax.random.key(0))
    decode_args = (weights, cache, jax.ShapeDtypeStruct((batch, spec.vocab_size), jnp.float32, sharding=replicated),
                   jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=replicated),
                   jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
                   (scalar(jnp.bool_), scalar(jnp.float32), scalar(jnp.float32), scalar(jnp.int32)),
                   jax.ShapeDtypeStruct((sampler.STOP_SLOTS,), jnp.int32, sharding=replicated))
    rules = mesh_lib.LOGICAL_RULES
    prefill = _lowered_under(mesh, sampler.prefill, spec=spec, cache_len=cache_len, compute_dtype=compute_dtype,
                             attention_impl=model.attention_impl, logical_rules=rules)
    decode = _lowered_under(mesh, sampler.decode, spec=spec, max_new_tokens=settings.max_new_tokens,
                            compute_dtype=compute_dtype, logical_rules=rules)
    # Resident while sampling: the optimizer state and step counter (the parameters are the sampler's weights).
    param_bytes = sum(_shard_bytes(leaf) for leaf in jax.tree.leaves(state.params))
    resident = sum(_shard_bytes(leaf) for leaf in jax.tree.leaves(state)) - param_bytes
    # The decode loop's body is one token for every row; the model count is that token's forward pass
    # against the whole cache (what the cached attention computes).
    common = dict(n_layers=spec.n_layers, scan_layers=False, loop_trips=1, mesh_axes=dict(mesh.shape),
                  attention_impl=model.attention_impl, resident_bytes=resident)
    return (
        ("prefill", CompileTarget(
            step=prefill, args=(weights, *prompts), arg_names=("weights", "tokens", "positions", "segment_ids"),
            tokens_per_step=batch * prompt_len,
            model_flops_per_step=forward_flops_per_token(spec, prompt_len) * batch * prompt_len, **common)),
        ("decode", CompileTarget(
            step=decode, args=decode_args,
            arg_names=("weights", "cache", "first_logits", "next_positions", "key", "controls", "stop_ids"),
            tokens_per_step=batch * settings.max_new_tokens,
            model_flops_per_step=forward_flops_per_token(spec, 2 * cache_len) * batch * settings.max_new_tokens,
            **common)),
    )


def _abstract_decoder_weights(params, spec, mesh):
    """decoder_weights of abstract parameters, each leaf keeping its parameter's sharding (unrolled layers are
    stacked on a leading, unsplit layer axis)."""
    params = nn.unbox(params)
    if "layers" in params:
        return decoder_weights(params, spec)
    stacked = jax.eval_shape(lambda p: decoder_weights(p, spec), params)
    first = params["layer_0"]
    blocks = jax.tree.map(lambda leaf, like: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(
        mesh, PartitionSpec(None, *like.sharding.spec))), stacked.blocks, first)
    return dataclasses.replace(stacked, blocks=blocks, embedding=params["embedding"],
                               lm_head=params.get("lm_head"), final_norm=params["final_norm"])


def _shard_bytes(leaf) -> int:
    return math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize


def _lowered_under(mesh, jitted, **static):
    """`jitted` with its static arguments bound, lowered under `mesh` (what `generate` does with a mesh)."""
    from xgen_core.train import mesh as mesh_lib

    def lower(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
            return jitted.lower(*args, **static)

    return types.SimpleNamespace(lower=lower)


def run(ctx) -> dict:
    """The `grpo` stage: RL from verifiable rewards on its `init` upstream (dpo, or --init URI)."""
    cfg = ctx.cfg
    return grpo(ctx.inputs["dpo"], ctx.output, cfg.grpo, cfg.train, cfg.train_run.mesh, cfg.posttrain_run,
                expected_model=cfg.section_dump("model"), log=ctx.log)
