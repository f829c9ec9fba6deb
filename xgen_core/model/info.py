"""Parameter counts from the model's own shapes (jax.eval_shape: nothing is allocated) and FLOPs per token."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import ModelSpec

EMBEDDING_PARAMS = ("embedding", "lm_head")


def abstract_params(spec: ModelSpec, seq_len: int = 8):
    """Parameter pytree of ShapeDtypeStructs (boxed with logical axis names)."""
    model = Decoder(spec, attention_impl="xla")
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens, tokens, tokens)
    return variables["params"]


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int
    non_embedding: int


def count_params(spec: ModelSpec) -> ParamCounts:
    params = nn.unbox(abstract_params(spec))
    sizes = {name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(sub)) for name, sub in params.items()}
    embedding = sum(size for name, size in sizes.items() if name in EMBEDDING_PARAMS)
    total = sum(sizes.values())
    return ParamCounts(total=total, embedding=embedding, non_embedding=total - embedding)


def training_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Model FLOPs per trained token, counted as MaxText does.

    Matmul FLOPs are 2 x (multiply-adds); the projections count query and key/value heads separately
    (GQA), attention scores + values count 4 x seq x heads x head_dim halved for the causal mask, the
    logits projection counts once, and the backward pass is twice the forward (x3 in all).
    """
    d, hd = spec.d_model, spec.head_dim
    mlp = 2 * 3 * d * spec.mlp_dim  # gate, up, down
    qkv = 2 * d * (spec.n_q_heads + 2 * spec.n_kv_heads) * hd
    out_projection = 2 * d * spec.n_q_heads * hd
    logits = 2 * d * spec.vocab_size
    causal_attention = 4 * seq_len * spec.n_q_heads * hd / 2
    weight_flops = spec.n_layers * (mlp + qkv + out_projection) + logits
    return 3.0 * (weight_flops + spec.n_layers * causal_attention)


def forward_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
    """Model FLOPs of one token's forward pass (a third of `training_flops_per_token`): at `seq_len` a causal
    row's tokens attend to seq_len / 2 keys on average, so one token against a whole cache of n keys is
    forward_flops_per_token(spec, 2 n)."""
    return training_flops_per_token(spec, seq_len) / 3


def model_info(spec: ModelSpec, seq_len: int | None = None) -> dict:
    seq_len = seq_len or spec.max_seq_len
    counts = count_params(spec)
    return {
        "preset": spec.name,
        "params_total": counts.total,
        "params_embedding": counts.embedding,
        "params_non_embedding": counts.non_embedding,
        "seq_len": seq_len,
        "training_flops_per_token": training_flops_per_token(spec, seq_len),
        "architecture": dataclasses.asdict(spec),
    }
