"""Decoder building blocks: RMSNorm, rotary position embeddings, SwiGLU MLP and GQA self-attention.

Parameters are created in float32 with logical axis names (see xgen_core/train/mesh.py for the rules that
map them onto the device mesh) and cast to the compute dtype where they are used.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xgen_core.model.attention import attention

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


def apply_rope(x, positions, theta: float):
    """Rotate (batch, len, heads, head_dim) by positions (batch, len); Llama's half-split convention."""
    half = x.shape[-1] // 2
    inverse_frequency = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inverse_frequency
    sin, cos = jnp.sin(angles), jnp.cos(angles)
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
        hidden = nn.silu(x @ gate.astype(cd)) * (x @ up.astype(cd))
        hidden = nn.with_logical_constraint(hidden, ("activation_batch", "activation_length", "activation_mlp"))
        return hidden @ down.astype(cd)


class SelfAttention(nn.Module):
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float
    attention_impl: str
    compute_dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, positions, segment_ids):
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
        q = jnp.einsum("btd,dhk->bthk", x, wq.astype(cd))
        k = jnp.einsum("btd,dhk->bthk", x, wk.astype(cd))
        v = jnp.einsum("btd,dhk->bthk", x, wv.astype(cd))
        q = apply_rope(q, positions, self.rope_theta)
        k = apply_rope(k, positions, self.rope_theta)
        heads = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
        q = nn.with_logical_constraint(q, heads)
        out = attention(q, k, v, segment_ids, impl=self.attention_impl)
        out = nn.with_logical_constraint(out, heads)
        return jnp.einsum("bthk,hkd->btd", out, wo.astype(cd))
