"""Decoder building blocks: RMSNorm, rotary position embeddings, SwiGLU MLP and GQA self-attention.

Parameters are created in float32 with logical axis names (see xgen_core/train/mesh.py for the rules that
map them onto the device mesh) and cast to the compute dtype where they are used.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xgen_core.model.attention import attention
from xgen_core.model.dense import dense

Dtype = Any


def logical_param(module: nn.Module, name: str, shape, axes: tuple, init, dtype: Dtype):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def fan_in_init(fan_in_axes=(0,)):
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=fan_in_axes)


class RMSNorm(nn.Module):
    eps: float
    compute_dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        scale = logical_param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones, self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.compute_dtype)


def rope_tables(positions, head_dim: int, theta: float, max_position: int):
    """(sin, cos) of the rotary angles, each (batch, len, 1, head_dim / 2) float32.

    Looked up in a (max_position, head_dim / 2) table that depends on no input, so XLA folds it into a
    constant: computed from `positions` directly, the power, sine and cosine get fused into every
    rotation (forward and backward) and evaluated again for each element of each head (an optimization
    barrier does not stop that on CPU, where barriers are removed before fusion). A position at or
    beyond `max_position` reads NaN rather than a wrong angle.
    """
    half = head_dim // 2
    inverse_frequency = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = jnp.arange(max_position, dtype=jnp.float32)[:, None] * inverse_frequency
    lookup = functools.partial(jnp.take, indices=positions, axis=0, mode="fill", fill_value=jnp.nan)
    return lookup(jnp.sin(angles))[:, :, None], lookup(jnp.cos(angles))[:, :, None]


def apply_rope(x, rope):
    """Rotate (batch, len, heads, head_dim) by `rope_tables`; Llama's half-split convention."""
    sin, cos = rope
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


class SwiGLU(nn.Module):
    mlp_dim: int
    compute_dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x):
        d_model = x.shape[-1]
        init = fan_in_init()
        gate = logical_param(self, "gate", (d_model, self.mlp_dim), ("embed", "mlp"), init, self.param_dtype)
        up = logical_param(self, "up", (d_model, self.mlp_dim), ("embed", "mlp"), init, self.param_dtype)
        down = logical_param(self, "down", (self.mlp_dim, d_model), ("mlp", "embed"), init, self.param_dtype)
        cd = self.compute_dtype
        hidden = nn.silu(dense(x, gate, cd)) * dense(x, up, cd)
        hidden = nn.with_logical_constraint(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return dense(hidden, down, cd)


class SelfAttention(nn.Module):
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    attention_impl: str
    compute_dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, rope, segment_ids, row_indices=None):
        """`rope`: the (sin, cos) tables of `rope_tables` for this row's positions; `row_indices`: see attention()."""
        d_model, cd = x.shape[-1], self.compute_dtype
        init = fan_in_init()
        wq = logical_param(self, "q", (d_model, self.n_q_heads, self.head_dim), ("embed", "q_heads", "kv"),
                           init, self.param_dtype)
        wk = logical_param(self, "k", (d_model, self.n_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"),
                           init, self.param_dtype)
        wv = logical_param(self, "v", (d_model, self.n_kv_heads, self.head_dim), ("embed", "kv_heads", "kv"),
                           init, self.param_dtype)
        wo = logical_param(self, "o", (self.n_q_heads, self.head_dim, d_model), ("q_heads", "kv", "embed"),
                           fan_in_init((0, 1)), self.param_dtype)
        q, k, v = (dense(x, w, cd) for w in (wq, wk, wv))
        q = apply_rope(q, rope)
        k = apply_rope(k, rope)
        heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q = nn.with_logical_constraint(q, heads)
        out = attention(q, k, v, segment_ids, impl=self.attention_impl, row_indices=row_indices)
        out = nn.with_logical_constraint(out, heads)
        return dense(out, wo, cd, contract=2)
