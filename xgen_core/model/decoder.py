"""The xGen-small decoder (Llama-2 forward pass) in Flax Linen.

Linen rather than NNX: parameters stay a plain pytree, so jit in/out shardings, optax and Orbax take them
as they are, and Linen's logical-axis machinery (with_logical_partitioning, logical_axis_rules,
logical_to_mesh_sharding, with_logical_constraint) is the MaxText way of sharding by named rules. NNX
would need split/merge at every transform boundary and puts physical mesh names on parameters.

Layers are stacked with nn.scan (one compiled layer body, a leading "layers" axis on every block
parameter), so compile time does not grow with depth.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xgen_core.model.context_parallel import context_shards, load_balanced_order
from xgen_core.model.dense import dense
from xgen_core.model.layers import RMSNorm, SelfAttention, SwiGLU, logical_param, rope_tables
from xgen_core.model.presets import ModelSpec

Dtype = Any


class DecoderBlock(nn.Module):
    spec: ModelSpec
    attention_impl: str
    compute_dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x, rope, segment_ids, row_indices):
        s, dtypes = self.spec, dict(compute_dtype=self.compute_dtype, param_dtype=self.param_dtype)
        attended = SelfAttention(
            s.n_q_heads, s.n_kv_heads, s.head_dim, self.attention_impl, name="attention", **dtypes
        )(RMSNorm(s.norm_eps, name="attention_norm", **dtypes)(x), rope, segment_ids, row_indices)
        x = x + attended
        x = x + SwiGLU(s.mlp_dim, name="mlp", **dtypes)(RMSNorm(s.norm_eps, name="mlp_norm", **dtypes)(x))
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, None


class Decoder(nn.Module):
    """tokens, positions, segment_ids (batch, len) int32 -> float32 logits (batch, len, vocab)."""

    spec: ModelSpec
    attention_impl: str = "auto"
    compute_dtype: Dtype = jnp.bfloat16
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    scan_layers: bool = True

    @nn.compact
    def __call__(self, tokens, positions, segment_ids):
        s = self.spec
        row_indices = restore = None
        if self.attention_impl == "blockwise":  # the kernel that runs under context parallelism
            tokens, positions, segment_ids, row_indices, restore = _context_order(tokens, positions, segment_ids)
        embedding = logical_param(
            self, "embedding", (s.vocab_size, s.d_model), ("vocab", "embed"),
            nn.initializers.normal(stddev=0.02), self.param_dtype,
        )
        # Gather the float32 rows, then cast: the backward pass scatter-adds into float32, not bf16.
        x = embedding[tokens].astype(self.compute_dtype)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        rope = rope_tables(positions, s.head_dim, s.rope_theta, max(s.max_seq_len, tokens.shape[1]))
        block_args = (s, self.attention_impl, self.compute_dtype, self.param_dtype)
        block = nn.remat(DecoderBlock, prevent_cse=not self.scan_layers) if self.remat else DecoderBlock
        if self.scan_layers:
            layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=s.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = layers(*block_args, name="layers")(x, rope, segment_ids, row_indices)
        else:
            for index in range(s.n_layers):
                x, _ = block(*block_args, name=f"layer_{index}")(x, rope, segment_ids, row_indices)
        if restore is not None:  # back to row order for the output head: logits come out as the rows went in
            x = nn.with_logical_constraint(jnp.take(x, restore, axis=1),
                                           ("activation_batch", "activation_length", "activation_embed"))
        # Parameters and logits stay float32 (paper section 3.3): the output projection reads compute-dtype
        # operands but accumulates and returns float32, as MaxText does.
        hidden = RMSNorm(s.norm_eps, self.compute_dtype, self.param_dtype, name="final_norm")(x)
        if s.tie_embeddings:
            logits = dense(hidden, embedding, self.compute_dtype, out_dtype=jnp.float32, kernel_transposed=True)
        else:
            head = logical_param(
                self, "lm_head", (s.d_model, s.vocab_size), ("embed", "vocab"),
                nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), self.param_dtype,
            )
            logits = dense(hidden, head, self.compute_dtype, out_dtype=jnp.float32)
        return nn.with_logical_constraint(logits, ("activation_batch", "activation_length", "activation_vocab"))


def _context_order(tokens, positions, segment_ids):
    """With a context axis of more than one device in the mesh in force: the rows in its load-balanced order,
    their row indices and the permutation that restores row order; otherwise the rows as they are. (Parameter
    initialisation traces an 8-token row with XLA attention, xgen_core/train/step.py, and so never splits.)"""
    shards = context_shards()
    if shards == 1:
        return tokens, positions, segment_ids, None, None
    order = load_balanced_order(tokens.shape[1], shards)
    reorder = functools.partial(jnp.take, indices=jnp.asarray(order), axis=1)
    row_indices = jnp.broadcast_to(jnp.asarray(order), tokens.shape)
    return reorder(tokens), reorder(positions), reorder(segment_ids), row_indices, jnp.asarray(np.argsort(order))
