"""Batched generation with a KV cache over the training Decoder's own parameters.

The prompt is prefilled in one forward pass (attention through the training kernel, `attention()`), then
tokens are generated one at a time against a per-layer GQA-shaped cache
(layers, batch, cache_len, n_kv_heads, head_dim) preallocated to the prompt bucket plus `max_new_tokens`.

Rows are left-padded to a common prompt length. Padding is handled as the training forward handles it:
padded slots carry segment id 0 (never attended to) and real tokens carry positions counted from their own
first token, so a row's logits do not depend on how much padding it got. Every row writes its next token
to the same cache slot, which keeps the decode step one fixed-shape program.

Each block reuses the training modules (RMSNorm, SwiGLU) and helpers (dense, apply_rope, rope_tables)
on the same parameter pytree, scanned (a leading "layers" axis) or unrolled (`layer_<i>`), so there is no
second copy of the model's arithmetic to drift; the cache-vs-recompute test holds the rest to the
training forward token for token.

Shapes are bucketed: the batch is rounded up to a power of two and the prompt length up to a multiple of
PROMPT_BUCKET, so jit compiles one prefill and one decode program per (batch, cache length) bucket.
Temperature, top-p, top-k, greedy and the stop tokens are traced arguments, not compile-time constants.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.errors import XgenError
from xgen_core.model.attention import attention, length_multiple
from xgen_core.model.dense import dense
from xgen_core.model.layers import RMSNorm, SwiGLU, apply_rope, rope_tables
from xgen_core.model.presets import ModelSpec

PROMPT_BUCKET = 32
STOP_SLOTS = 8  # stop tokens are passed as a fixed-size array, padded with -1


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token. `greedy` ignores temperature, top_p and top_k; top_k 0 means off."""

    max_new_tokens: int
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise XgenError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise XgenError(f"temperature must be > 0 (or use greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise XgenError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise XgenError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if len(self.stop_tokens) > STOP_SLOTS:
            raise XgenError(f"at most {STOP_SLOTS} stop tokens, got {len(self.stop_tokens)}")


@dataclasses.dataclass(frozen=True)
class Generation:
    """One row's output: the completion ids (a stop token that ended it included) and why it ended."""

    completion_ids: list[int]
    finish_reason: str  # "stop" or "length"


@dataclasses.dataclass(frozen=True)
class DecoderWeights:
    """The Decoder's parameters with the blocks stacked on a leading layer axis, scanned or unrolled alike."""

    embedding: Any
    lm_head: Any  # None when the embedding is tied
    final_norm: Any
    blocks: Any


jax.tree_util.register_dataclass(
    DecoderWeights, data_fields=["embedding", "lm_head", "final_norm", "blocks"], meta_fields=[]
)


def decoder_weights(params, spec: ModelSpec) -> DecoderWeights:
    """Regroup a Decoder's (unboxed) params; an unrolled model's `layer_<i>` blocks are stacked once here."""
    params = nn.unbox(params)
    if "layers" in params:
        blocks = params["layers"]
    else:
        per_layer = [params[f"layer_{index}"] for index in range(spec.n_layers)]
        blocks = jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_layer)
    return DecoderWeights(params["embedding"], params.get("lm_head"), params["final_norm"], blocks)


def _norm(spec, compute_dtype, scale_params, x):
    return RMSNorm(spec.norm_eps, compute_dtype, jnp.float32).apply({"params": scale_params}, x)


def _project_qkv(spec, compute_dtype, block, x, rope):
    attn = block["attention"]
    q, k, v = (dense(x, attn[name], compute_dtype) for name in ("q", "k", "v"))
    return apply_rope(q, rope), apply_rope(k, rope), v


def _block_tail(spec, compute_dtype, block, x, attended):
    """Output projection, residuals and the MLP: the part of DecoderBlock after attention."""
    x = x + dense(attended, block["attention"]["o"], compute_dtype, contract=2)
    mlp = SwiGLU(spec.mlp_dim, compute_dtype, jnp.float32).apply({"params": block["mlp"]},
                                                                  _norm(spec, compute_dtype, block["mlp_norm"], x))
    return x + mlp


def _logits(spec, compute_dtype, weights: DecoderWeights, x):
    hidden = _norm(spec, compute_dtype, weights.final_norm, x)
    if spec.tie_embeddings:
        return dense(hidden, weights.embedding, compute_dtype, out_dtype=jnp.float32, kernel_transposed=True)
    return dense(hidden, weights.lm_head, compute_dtype, out_dtype=jnp.float32)


CACHE_AXES = ("layers", "activation_batch", "activation_length", "kv_heads", "activation_kv")


def _constrain_cache(k_cache, v_cache):
    """Under the training mesh's logical rules: rows split like activations, KV heads like the k/v weights."""
    return nn.with_logical_constraint(k_cache, CACHE_AXES), nn.with_logical_constraint(v_cache, CACHE_AXES)


def _layer(blocks, index):
    return jax.tree.map(lambda leaf: leaf[index], blocks)


def cached_attention(q, k_cache, v_cache, cache_segment_ids, query_slot):
    """One query per row, (batch, 1, n_q_heads, head_dim), against the cache up to and including its slot.

    The same arithmetic as the training xla kernel (GQA by grouping, float32 scores and softmax);
    slots after `query_slot` or holding padding (segment id 0) are masked out.
    """
    batch, _, n_q_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[2]
    grouped_q = q.reshape(batch, 1, n_kv_heads, n_q_heads // n_kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", grouped_q, k_cache, preferred_element_type=jnp.float32)
    logits = logits * np.float32(1 / np.sqrt(head_dim))
    visible = (cache_segment_ids > 0) & (jnp.arange(k_cache.shape[1]) <= query_slot)[None, :]
    logits = jnp.where(visible[:, None, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v_cache.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v_cache, preferred_element_type=jnp.float32)
    return out.reshape(q.shape).astype(q.dtype)


@functools.partial(jax.jit, static_argnames=("spec", "cache_len", "compute_dtype", "attention_impl", "logical_rules"))
def prefill(weights: DecoderWeights, tokens, positions, segment_ids, *, spec: ModelSpec, cache_len: int,
            compute_dtype, attention_impl: str, logical_rules: tuple = ()):
    """Run the left-padded prompts (batch, prompt_len); return the cache and the last slot's logits.

    `logical_rules` (the training mesh's, under `jax.set_mesh`) is a static argument so that a sharded and
    an unsharded call never share a compiled program."""
    with nn.logical_axis_rules(logical_rules):
        return _prefill(weights, tokens, positions, segment_ids, spec, cache_len, compute_dtype, attention_impl)


def _prefill(weights, tokens, positions, segment_ids, spec, cache_len, compute_dtype, attention_impl):
    batch, prompt_len = tokens.shape
    rope = rope_tables(positions, spec.head_dim, spec.rope_theta, max(spec.max_seq_len, cache_len))
    x = weights.embedding[tokens].astype(compute_dtype)
    cache_shape = (spec.n_layers, batch, cache_len, spec.n_kv_heads, spec.head_dim)
    k_cache, v_cache = _constrain_cache(jnp.zeros(cache_shape, compute_dtype), jnp.zeros(cache_shape, compute_dtype))

    def one_layer(index, carry):
        x, k_cache, v_cache = carry
        block = _layer(weights.blocks, index)
        q, k, v = _project_qkv(spec, compute_dtype, block, _norm(spec, compute_dtype, block["attention_norm"], x),
                               rope)
        attended = attention(q, k, v, segment_ids, impl=attention_impl)
        k_cache, v_cache = _constrain_cache(jax.lax.dynamic_update_slice(k_cache, k[None], (index, 0, 0, 0, 0)),
                                            jax.lax.dynamic_update_slice(v_cache, v[None], (index, 0, 0, 0, 0)))
        return _block_tail(spec, compute_dtype, block, x, attended), k_cache, v_cache

    x, k_cache, v_cache = jax.lax.fori_loop(0, spec.n_layers, one_layer, (x, k_cache, v_cache))
    cache_segments = jnp.zeros((batch, cache_len), jnp.int32).at[:, :prompt_len].set(segment_ids)
    return (k_cache, v_cache, cache_segments), _logits(spec, compute_dtype, weights, x[:, -1])


def decode_step(weights: DecoderWeights, cache, token, position, slot, *, spec: ModelSpec, compute_dtype):
    """Feed one token per row (batch,) at cache slot `slot`; return the updated cache and next logits."""
    k_cache, v_cache, cache_segments = cache
    cache_len = k_cache.shape[2]
    cache_segments = jax.lax.dynamic_update_slice(cache_segments, jnp.ones_like(cache_segments[:, :1]), (0, slot))
    rope = rope_tables(position[:, None], spec.head_dim, spec.rope_theta, max(spec.max_seq_len, cache_len))
    x = weights.embedding[token[:, None]].astype(compute_dtype)

    def one_layer(index, carry):
        x, k_cache, v_cache = carry
        block = _layer(weights.blocks, index)
        q, k, v = _project_qkv(spec, compute_dtype, block, _norm(spec, compute_dtype, block["attention_norm"], x),
                               rope)
        k_cache, v_cache = _constrain_cache(jax.lax.dynamic_update_slice(k_cache, k[None], (index, 0, slot, 0, 0)),
                                            jax.lax.dynamic_update_slice(v_cache, v[None], (index, 0, slot, 0, 0)))
        attended = cached_attention(q, k_cache[index], v_cache[index], cache_segments, slot)
        return _block_tail(spec, compute_dtype, block, x, attended), k_cache, v_cache

    x, k_cache, v_cache = jax.lax.fori_loop(0, spec.n_layers, one_layer, (x, k_cache, v_cache))
    return (k_cache, v_cache, cache_segments), _logits(spec, compute_dtype, weights, x[:, 0])


def sample_next(logits, key, greedy, temperature, top_p, top_k):
    """(batch, vocab) float32 logits -> (batch,) int32 tokens. All controls are traced scalars.

    top-k keeps the k highest logits (0: all); top-p then keeps the smallest set of the highest
    probabilities whose mass reaches top_p (the most likely token always stays).
    """
    vocab = logits.shape[-1]
    scaled = logits / jnp.maximum(temperature, np.float32(1e-6))
    sorted_desc = -jnp.sort(-scaled, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth_value = jnp.take_along_axis(sorted_desc, (k - 1)[None, None].repeat(logits.shape[0], 0), axis=-1)
    sorted_probs = jax.nn.softmax(jnp.where(jnp.arange(vocab) < k, sorted_desc, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept_in_sorted = (mass_before < top_p) & (jnp.arange(vocab) < k)
    # The smallest logit still kept: every logit at or above it survives (ties included).
    cutoff = jnp.min(jnp.where(kept_in_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    cutoff = jnp.maximum(cutoff, kth_value)
    filtered = jnp.where(scaled >= cutoff, scaled, -jnp.inf)
    sampled = jax.random.categorical(key, filtered, axis=-1)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("spec", "max_new_tokens", "compute_dtype", "logical_rules"))
def decode(weights: DecoderWeights, cache, first_logits, next_positions, key, controls, stop_ids, *,
           spec: ModelSpec, max_new_tokens: int, compute_dtype, logical_rules: tuple = ()):
    """Generate up to `max_new_tokens` per row after `prefill`; stops early once every row has stopped.

    Returns (tokens (batch, max_new_tokens) int32, lengths (batch,) int32, stopped (batch,) bool);
    a row's tokens after its length are meaningless.
    """
    greedy, temperature, top_p, top_k = controls
    batch = first_logits.shape[0]
    first_slot = cache[0].shape[2] - max_new_tokens

    def pick(logits, step_key):
        return sample_next(logits, step_key, greedy, temperature, top_p, top_k)

    def not_finished(state):
        step, _, _, _, _, _, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def one_token(state):
        step, cache, logits, key, tokens, lengths, done = state
        key, step_key = jax.random.split(key)
        token = jnp.where(done, 0, pick(logits, step_key))
        tokens = tokens.at[:, step].set(token)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
        cache, logits = decode_step(weights, cache, token, next_positions + step, first_slot + step,
                                    spec=spec, compute_dtype=compute_dtype)
        return step + 1, cache, logits, key, tokens, lengths, done

    state = (jnp.int32(0), cache, first_logits, key, jnp.zeros((batch, max_new_tokens), jnp.int32),
             jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool))
    with nn.logical_axis_rules(logical_rules):
        _, _, _, _, tokens, lengths, done = jax.lax.while_loop(not_finished, one_token, state)
    return tokens, lengths, done


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pad_prompts(prompts: Sequence[Sequence[int]], batch: int, prompt_len: int):
    """Left-pad prompts into (batch, prompt_len) tokens, positions and segment ids (0 on padding).

    Rows past len(prompts) repeat the first prompt so the batch fills its bucket; they are discarded."""
    tokens = np.zeros((batch, prompt_len), np.int32)
    positions = np.zeros((batch, prompt_len), np.int32)
    segments = np.zeros((batch, prompt_len), np.int32)
    for row in range(batch):
        prompt = prompts[row] if row < len(prompts) else prompts[0]
        start = prompt_len - len(prompt)
        tokens[row, start:] = prompt
        positions[row, start:] = np.arange(len(prompt))
        segments[row, start:] = 1
    return tokens, positions, segments


def bucket_shape(n_prompts: int, longest_prompt: int, max_new_tokens: int,
                 batch_shards: int = 1, length_multiple: int = 1) -> tuple[int, int, int]:
    """(batch, prompt_len, cache_len) of the compiled program a request runs in; `batch_shards`: the mesh's
    data x fsdp size, which the batch must divide by; `length_multiple`: what the prefill's attention kernel
    needs the prompt length to divide by (128 for the TPU's Pallas kernels, attention.length_multiple)."""
    batch = round_up(1 << max(0, (n_prompts - 1).bit_length()), batch_shards)
    prompt_len = round_up(longest_prompt, math.lcm(PROMPT_BUCKET, length_multiple))
    return batch, prompt_len, prompt_len + max_new_tokens


def _check_prompts(prompts, spec: ModelSpec, config: SamplingConfig) -> None:
    if not prompts:
        raise XgenError("no prompts to generate from")
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise XgenError(f"prompt {index} is empty: a row needs at least one token to condition on")
        bad = [token for token in prompt if not 0 <= token < spec.vocab_size]
        if bad:
            raise XgenError(f"prompt {index} has token ids outside the vocabulary [0, {spec.vocab_size}): {bad[:5]}")
        if len(prompt) + config.max_new_tokens > spec.max_seq_len:
            raise XgenError(f"prompt {index} ({len(prompt)} tokens) plus {config.max_new_tokens} new tokens "
                            f"exceeds the model's {spec.max_seq_len}-token context")


def generate(weights: DecoderWeights, spec: ModelSpec, prompts: Sequence[Sequence[int]], config: SamplingConfig,
             key, *, compute_dtype=jnp.bfloat16, attention_impl: str = "auto", mesh=None) -> list[Generation]:
    """Complete each prompt (a list of token ids); `key` is this call's PRNG key (unused when greedy).

    With `mesh` (the training mesh; `weights` placed on it, e.g. restored with the training shardings) rows
    are split over data x fsdp, the cache's KV heads over tensor, and the model's own logical constraints apply.
    """
    _check_prompts(prompts, spec, config)
    if mesh is None:
        return _generate(weights, spec, prompts, config, key, compute_dtype, attention_impl, 1, ())
    from xgen_core.train import mesh as mesh_lib

    batch_shards = math.prod(mesh.shape[axis] for axis in mesh_lib.BATCH_AXES)
    with jax.set_mesh(mesh):
        return _generate(weights, spec, prompts, config, key, compute_dtype, attention_impl, batch_shards,
                         mesh_lib.LOGICAL_RULES)


def _generate(weights, spec, prompts, config, key, compute_dtype, attention_impl, batch_shards: int,
              logical_rules: tuple):
    batch, prompt_len, cache_len = bucket_shape(len(prompts), max(map(len, prompts)), config.max_new_tokens,
                                                batch_shards, length_multiple(attention_impl))
    tokens, positions, segments = pad_prompts(prompts, batch, prompt_len)
    cache, logits = prefill(weights, tokens, positions, segments, spec=spec, cache_len=cache_len,
                            compute_dtype=compute_dtype, attention_impl=attention_impl, logical_rules=logical_rules)
    controls = (jnp.bool_(config.greedy), jnp.float32(config.temperature), jnp.float32(config.top_p),
                jnp.int32(config.top_k))
    stop_ids = np.full((STOP_SLOTS,), -1, np.int32)
    stop_ids[: len(config.stop_tokens)] = config.stop_tokens
    next_positions = positions[:, -1] + 1
    out, lengths, stopped = decode(weights, cache, logits, next_positions, key, controls, stop_ids, spec=spec,
                                   max_new_tokens=config.max_new_tokens, compute_dtype=compute_dtype,
                                   logical_rules=logical_rules)
    out, lengths, stopped = np.asarray(out), np.asarray(lengths), np.asarray(stopped)
    return [Generation(out[row, : lengths[row]].tolist(), "stop" if stopped[row] else "length")
            for row in range(len(prompts))]


def greedy_by_recomputing(model, params, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                          length_bucket: int = PROMPT_BUCKET, forward=None) -> list[list[int]]:
    """Greedy generation with no cache: the full training forward over every row at every step.

    Rows are left-padded exactly as `generate` pads them (segment id 0, positions from each row's first
    token); the forward runs on the sequence so far, rounded up to `length_bucket` so it compiles a
    handful of shapes rather than one per step (later slots cannot reach earlier logits: attention is causal).
    `forward`: `jax.jit(model.apply)`, or None to make one.
    """
    batch, prompt_len, cache_len = bucket_shape(len(prompts), max(map(len, prompts)), max_new_tokens)
    tokens, positions, segments = (np.zeros((batch, cache_len), np.int32) for _ in range(3))
    tokens[:, :prompt_len], positions[:, :prompt_len], segments[:, :prompt_len] = pad_prompts(
        prompts, batch, prompt_len)
    forward = forward or jax.jit(model.apply)  # a caller may pass one it has already compiled
    for slot in range(prompt_len, cache_len):
        visible = min(round_up(slot, length_bucket), cache_len)
        logits = forward({"params": params}, tokens[:, :visible], positions[:, :visible], segments[:, :visible])
        tokens[:, slot] = np.asarray(jnp.argmax(logits[:, slot - 1], axis=-1))
        positions[:, slot] = positions[:, slot - 1] + 1
        segments[:, slot] = 1
    return [tokens[row, prompt_len:].tolist() for row in range(len(prompts))]
