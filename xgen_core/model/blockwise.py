"""Blockwise (flash-style) attention in plain JAX: memory linear in sequence length, on any backend.

The score matrix is never materialised. Queries go in blocks of `block_q` rows; each query block walks the
key/value blocks with an online softmax (running max, running sum, running weighted values), so the forward
pass keeps only the output and one log-sum-exp per query row. The backward pass (a custom VJP, FlashAttention-2's
algorithm) recomputes each block's probabilities from that log-sum-exp and accumulates dQ per query block and
dK / dV in arrays of the key length: every residual and accumulator is linear in length.

Masks are applied per block from three per-token arrays:
    segment ids   a key is seen only by queries of the same non-zero segment (packed documents, padding = 0)
    row indices   a key is seen only by queries at or after its index (causality)
so the same kernel serves one device (indices 0..len-1) and context parallelism, where a device holds a
load-balanced, non-contiguous subset of the queries against all keys (xgen_core/model/context_parallel.py).
A block pair whose mask is all false is skipped with `lax.cond` (no matmul, no exponentials), and on one device
the walk stops at the diagonal block, so the causal upper triangle is never even visited.

Same argument layout as xgen_core/model/attention.py: q (batch, q_len, q_heads, head_dim), k and v
(batch, kv_len, kv_heads, head_dim), GQA without repeating K and V; products in the compute dtype with float32
accumulation, softmax statistics in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BLOCK = 512


def blockwise_attention(q, k, v, segment_ids, *, block: int = DEFAULT_BLOCK):
    """Per-document causal self-attention over packed rows (q, k, v share the row's length)."""
    seq_len = q.shape[1]
    block = min(block, seq_len)
    indices = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), segment_ids.shape)
    return blockwise_attention_at(
        q, k, v, segment_ids, segment_ids, indices, indices, block_q=block, block_kv=block, causal_walk=True
    )


def blockwise_attention_at(q, k, v, q_segment_ids, kv_segment_ids, q_indices, kv_indices, *,
                           block_q: int = DEFAULT_BLOCK, block_kv: int = DEFAULT_BLOCK, causal_walk: bool = False):
    """Attention of queries at row indices `q_indices` over keys at `kv_indices` (any order, any subset).

    `causal_walk=True` promises that both index arrays are 0..len-1 and the block sizes are equal, so query block
    i needs key blocks 0..i only. Lengths that are not a multiple of the block are padded with segment id 0
    (masked) and the padding is cut off again.
    """
    q_len, kv_len = q.shape[1], kv_segment_ids.shape[1]
    block_q, block_kv = min(block_q, q_len), min(block_kv, kv_len)
    q_pad, kv_pad = -q_len % block_q, -kv_len % block_kv
    if q_pad:
        q, q_segment_ids, q_indices = _pad_length(q, q_pad), _pad_length(q_segment_ids, q_pad), \
            _pad_length(q_indices, q_pad)
    if kv_pad:
        k, v, kv_segment_ids, kv_indices = (_pad_length(x, kv_pad) for x in (k, v, kv_segment_ids, kv_indices))
    out = _flash(q, k, v, q_segment_ids.astype(jnp.int32), kv_segment_ids.astype(jnp.int32),
                 q_indices.astype(jnp.int32), kv_indices.astype(jnp.int32), (block_q, block_kv, causal_walk))
    return out[:, :q_len]


def _pad_length(x, pad: int):
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _block_mask(q_segments, kv_segments, q_indices, kv_indices):
    """(batch, block_q, block_kv) bool: same non-padding segment and key not after query."""
    same_segment = q_segments[:, :, None] == kv_segments[:, None, :]
    causal = q_indices[:, :, None] >= kv_indices[:, None, :]
    return same_segment & causal & (kv_segments > 0)[:, None, :]


def _split_blocks(x, block: int):
    """(batch, len, ...) -> (len / block, batch, block, ...): blocks first, for scans and dynamic indexing."""
    return jnp.moveaxis(x.reshape(x.shape[0], x.shape[1] // block, block, *x.shape[2:]), 1, 0)


def _join_blocks(x):
    """Inverse of `_split_blocks`."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _kv_block_range(q_block: jax.Array, n_kv_blocks: int, causal_walk: bool):
    return q_block + 1 if causal_walk else n_kv_blocks


def _scores(q_block, k_block, mask, scale):
    """Scaled logits (batch, kv_heads, group, block_q, block_kv) in float32, masked entries -inf."""
    logits = jnp.einsum("btkgd,bskd->bkgts", q_block, k_block, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask[:, None, None], logits, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(q, k, v, q_segments, kv_segments, q_indices, kv_indices, layout):
    return _flash_fwd(q, k, v, q_segments, kv_segments, q_indices, kv_indices, layout)[0]


def _flash_fwd(q, k, v, q_segments, kv_segments, q_indices, kv_indices, layout):
    block_q, block_kv, causal_walk = layout
    q_segments, kv_segments, q_indices, kv_indices = _tie_to(q, q_segments, kv_segments, q_indices, kv_indices)
    batch, q_len, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    group = n_q_heads // n_kv_heads
    scale = np.float32(1 / np.sqrt(head_dim))
    grouped_q = q.reshape(batch, q_len, n_kv_heads, group, head_dim)
    k_blocks, v_blocks = _split_blocks(k, block_kv), _split_blocks(v, block_kv)
    kv_segment_blocks, kv_index_blocks = _split_blocks(kv_segments, block_kv), _split_blocks(kv_indices, block_kv)
    n_kv_blocks = k_blocks.shape[0]

    def query_block(_, xs):
        i, q_block, q_seg, q_idx = xs

        def visit(j, carry):
            mask = _block_mask(q_seg, kv_segment_blocks[j], q_idx, kv_index_blocks[j])

            def update(carry):
                running_max, running_sum, acc = carry
                logits = _scores(q_block, k_blocks[j], mask, scale)
                new_max = jnp.maximum(running_max, logits.max(-1))
                safe_max = jnp.where(jnp.isneginf(new_max), 0.0, new_max)  # no key seen yet: no -inf - -inf
                probabilities = jnp.exp(logits - safe_max[..., None])
                correction = jnp.exp(running_max - safe_max)
                values = jnp.einsum("bkgts,bskd->bkgtd", probabilities.astype(v.dtype), v_blocks[j],
                                    preferred_element_type=jnp.float32)
                return (new_max, running_sum * correction + probabilities.sum(-1),
                        acc * correction[..., None] + values)

            return jax.lax.cond(jnp.any(mask), update, lambda c: c, carry)

        stats_shape = (batch, n_kv_heads, group, block_q)
        init = (jnp.full(stats_shape, -jnp.inf, jnp.float32), jnp.zeros(stats_shape, jnp.float32),
                jnp.zeros((*stats_shape, head_dim), jnp.float32))
        running_max, running_sum, acc = jax.lax.fori_loop(
            0, _kv_block_range(i, n_kv_blocks, causal_walk), visit, init
        )
        seen = running_sum > 0  # padding queries see no key: output 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, running_sum, 1.0)[..., None], 0.0)
        log_sum_exp = jnp.where(seen, running_max + jnp.log(jnp.where(seen, running_sum, 1.0)), 0.0)
        return None, (jnp.einsum("bkgtd->btkgd", out).astype(q.dtype), log_sum_exp)

    n_q_blocks = q_len // block_q
    xs = (jnp.arange(n_q_blocks), _split_blocks(grouped_q, block_q), _split_blocks(q_segments, block_q),
          _split_blocks(q_indices, block_q))
    _, (out_blocks, lse_blocks) = jax.lax.scan(query_block, None, xs)
    out = _join_blocks(out_blocks).reshape(q.shape)
    return out, (q, k, v, q_segments, kv_segments, q_indices, kv_indices, out, lse_blocks)


def _tie_to(x, *others):
    """`others` made to depend on `x` (an optimization barrier over all of them).

    Under a scan over layers, segment ids and row indices are the same in every layer, and JAX's scan partial
    evaluation (`_scan_known_hoisting`) computes whatever depends only on such loop invariants once, before the
    loop: every block pair's mask and -inf fill, stacked (n_q_blocks, n_kv_blocks, ..., block_q, block_kv), the
    whole score matrix. Tied to the queries (which change from layer to layer) they stay inside the loops.
    """
    _, *others = jax.lax.optimization_barrier((x, *others))
    return others


def _flash_bwd(layout, residuals, d_out):
    block_q, block_kv, causal_walk = layout
    q, k, v, q_segments, kv_segments, q_indices, kv_indices, out, lse_blocks = residuals
    batch, q_len, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    group = n_q_heads // n_kv_heads
    scale = np.float32(1 / np.sqrt(head_dim))
    grouped = functools.partial(jnp.reshape, shape=(batch, q_len, n_kv_heads, group, head_dim))
    d_out = grouped(d_out.astype(q.dtype))
    # rowsum(dP * P) = rowsum(dO * O): the softmax backward's correction term, one float per query and head.
    delta = jnp.einsum("btkgd,btkgd->bkgt", d_out.astype(jnp.float32), grouped(out).astype(jnp.float32))
    k_blocks, v_blocks = _split_blocks(k, block_kv), _split_blocks(v, block_kv)
    kv_segment_blocks, kv_index_blocks = _split_blocks(kv_segments, block_kv), _split_blocks(kv_indices, block_kv)
    n_kv_blocks = k_blocks.shape[0]
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)

    def query_block(carry, xs):
        d_k_blocks, d_v_blocks = carry
        i, q_block, d_out_block, q_seg, q_idx, lse, delta_block = xs

        def visit(j, inner):
            mask = _block_mask(q_seg, kv_segment_blocks[j], q_idx, kv_index_blocks[j])

            def update(inner):
                d_q_block, d_k_blocks, d_v_blocks = inner
                logits = _scores(q_block, k_blocks[j], mask, scale)
                probabilities = jnp.exp(logits - lse[..., None])
                d_v = f32("bkgts,btkgd->bskd", probabilities.astype(v.dtype), d_out_block)
                d_probabilities = f32("btkgd,bskd->bkgts", d_out_block, v_blocks[j])
                d_logits = (probabilities * (d_probabilities - delta_block[..., None]) * scale).astype(q.dtype)
                d_q_block = d_q_block + f32("bkgts,bskd->btkgd", d_logits, k_blocks[j])
                d_k = f32("bkgts,btkgd->bskd", d_logits, q_block)
                return d_q_block, d_k_blocks.at[j].add(d_k), d_v_blocks.at[j].add(d_v)

            return jax.lax.cond(jnp.any(mask), update, lambda c: c, inner)

        d_q_block = jnp.zeros(q_block.shape, jnp.float32)
        d_q_block, d_k_blocks, d_v_blocks = jax.lax.fori_loop(
            0, _kv_block_range(i, n_kv_blocks, causal_walk), visit, (d_q_block, d_k_blocks, d_v_blocks)
        )
        return (d_k_blocks, d_v_blocks), d_q_block.astype(q.dtype)

    n_q_blocks = q_len // block_q
    xs = (jnp.arange(n_q_blocks), _split_blocks(grouped(q), block_q), _split_blocks(d_out, block_q),
          _split_blocks(q_segments, block_q), _split_blocks(q_indices, block_q), lse_blocks,
          jnp.moveaxis(delta.reshape(batch, n_kv_heads, group, n_q_blocks, block_q), 3, 0))
    zeros = jnp.zeros(k_blocks.shape, jnp.float32)
    (d_k_blocks, d_v_blocks), d_q_blocks = jax.lax.scan(query_block, (zeros, zeros), xs)
    d_q = _join_blocks(d_q_blocks).reshape(q.shape)
    no_grad = functools.partial(np.zeros, dtype=jax.dtypes.float0)
    return (d_q, _join_blocks(d_k_blocks).astype(k.dtype), _join_blocks(d_v_blocks).astype(v.dtype),
            no_grad(q_segments.shape), no_grad(kv_segments.shape), no_grad(q_indices.shape),
            no_grad(kv_indices.shape))


_flash.defvjp(_flash_fwd, _flash_bwd)
