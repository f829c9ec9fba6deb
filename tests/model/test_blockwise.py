"""Blockwise attention: the reference's output and gradients, per-document masking, skipped blocks, linear memory."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.model.test_attention import SEGMENTS, per_document_reference, random_qkv
from xgen_core.model import attention as attn
from xgen_core.model.blockwise import blockwise_attention, blockwise_attention_at


def test_output_equals_per_document_reference():
    q, k, v = random_qkv()
    out = np.asarray(blockwise_attention(q, k, v, jnp.asarray(SEGMENTS), block=32))
    expected = per_document_reference(q, k, v, SEGMENTS)
    real = SEGMENTS > 0
    np.testing.assert_allclose(out[real], expected[real], atol=2e-5, rtol=1e-4)


def _gradients(fn, q, k, v, segments, seed=1):
    # Padding queries' outputs are never used (their loss weight is 0): the cotangent is zero there.
    weights = np.random.default_rng(seed).normal(size=q.shape).astype(np.float32) * (segments > 0)[..., None, None]
    loss = lambda q, k, v: jnp.sum(fn(q, k, v, jnp.asarray(segments)) * weights)  # noqa: E731
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("block", [32, 48, 128])  # 48: the length is not a multiple of the block (padded)
def test_gradients_equal_the_reference_with_segment_ids(block):
    q, k, v = random_qkv()
    reference = _gradients(attn.xla_attention, q, k, v, SEGMENTS)
    blockwise = _gradients(lambda *a: blockwise_attention(*a, block=block), q, k, v, SEGMENTS)
    for name, want, got in zip("qkv", reference, blockwise):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-4, err_msg=f"d{name}")


def test_bfloat16_compute_stays_close_to_float32():
    q, k, v = random_qkv()
    exact = np.asarray(blockwise_attention(q, k, v, jnp.asarray(SEGMENTS), block=32))
    low = blockwise_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), jnp.asarray(SEGMENTS), block=32)
    real = SEGMENTS > 0
    assert np.abs(np.asarray(low, np.float32)[real] - exact[real]).max() < 5e-2


def test_selected_by_the_attention_entry_point():
    q, k, v = random_qkv()
    out = np.asarray(attn.attention(q, k, v, jnp.asarray(SEGMENTS), impl="blockwise"))
    real = SEGMENTS > 0
    np.testing.assert_allclose(out[real], per_document_reference(q, k, v, SEGMENTS)[real], atol=2e-5, rtol=1e-4)


def test_fully_masked_blocks_are_never_computed():
    """NaN in the values of blocks that no query of a block may see: a computed block would spread it (0 x NaN)."""
    q, k, v = random_qkv()
    one_document = jnp.ones((2, 128), jnp.int32)
    v_last_block_nan = v.at[:, 96:].set(jnp.nan)  # block 3 of 4: only queries 96.. see it (causal upper triangle)
    out = np.asarray(blockwise_attention(q, k, v_last_block_nan, one_document, block=32))
    assert np.isfinite(out[:, :96]).all() and np.isnan(out[:, 96:]).all()
    grads = _gradients(lambda *a: blockwise_attention(*a, block=32), q, k, v_last_block_nan, np.ones((2, 128), int))
    assert np.isfinite(np.asarray(grads[0])[:, :96]).all()
    # Segment masking: row 1 of SEGMENTS ends in 20 padding tokens; a block of only padding keys is skipped too.
    padded = np.concatenate([np.ones((2, 96), np.int32), np.zeros((2, 32), np.int32)], axis=1)
    out = np.asarray(blockwise_attention(q, k, v_last_block_nan, jnp.asarray(padded), block=32))
    assert np.isfinite(out[:, :96]).all()
    # The reference computes every block, so the probe would catch a kernel that did.
    assert np.isnan(np.asarray(attn.jax_nn_attention(q, k, v_last_block_nan, jnp.asarray(padded),
                                                     implementation="xla"))[:, :96]).any()


def test_queries_at_arbitrary_row_indices():
    """The context-parallel form: a permuted subset of queries against all keys equals the same rows of the whole."""
    q, k, v = random_qkv()
    segments = jnp.asarray(SEGMENTS)
    rows = np.random.default_rng(3).permutation(128)[:64].astype(np.int32)
    indices = jnp.broadcast_to(jnp.arange(128, dtype=jnp.int32), segments.shape)
    out = blockwise_attention_at(q[:, rows], k, v, segments[:, rows], segments, indices[:, rows], indices,
                                 block_q=16, block_kv=32)
    whole = blockwise_attention(q, k, v, segments, block=32)
    real = SEGMENTS[:, rows] > 0
    np.testing.assert_allclose(np.asarray(out)[real], np.asarray(whole)[:, rows][real], atol=2e-5, rtol=1e-4)


def _forward_backward_temp_bytes(fn, seq_len: int) -> int:
    q = jax.ShapeDtypeStruct((1, seq_len, 4, 32), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, seq_len, 2, 32), jnp.float32)
    segments = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    grad = jax.jit(jax.grad(lambda q, k, v, s: jnp.sum(fn(q, k, v, s)), argnums=(0, 1, 2)))
    return grad.lower(q, kv, kv, segments).compile().memory_analysis().temp_size_in_bytes


def test_memory_is_linear_in_length():
    """XLA's buffer assignment of forward + backward: 4x the length costs at most ~4x the scratch memory."""
    blockwise = lambda q, k, v, s: blockwise_attention(q, k, v, s, block=128)  # noqa: E731
    short, long = (_forward_backward_temp_bytes(blockwise, n) for n in (1024, 4096))
    assert long < 4.5 * short
    dense = lambda q, k, v, s: attn.jax_nn_attention(q, k, v, s, implementation="xla")  # noqa: E731
    dense_short, dense_long = (_forward_backward_temp_bytes(dense, n) for n in (1024, 4096))
    assert dense_long > 12 * dense_short  # the score matrix: quadratic
    assert long < dense_long / 10


def _largest_score_stack(text: str, block: int) -> int:
    """Elements of the largest (..., block, block) array in lowered StableHLO: score / probability blocks."""
    sizes = [int(np.prod([int(d) for d in dims.split("x")]))
             for dims in re.findall(rf"tensor<((?:\d+x)*{block}x{block})x(?:f32|bf16|i1)>", text)]
    return max(sizes, default=0)


def test_no_score_block_is_stacked_under_a_layer_scan():
    """Under a scan over layers (nn.scan) with the masks' inputs broadcast into every layer, JAX's scan partial
    evaluation hoists whatever depends only on loop-invariant inputs out of the loop: without the kernel's
    barrier the masks and -inf fills of every (query block, key block) pair are precomputed and stacked, the
    whole score matrix (98 GB per chip for the 9B at 131,072 tokens on v5p:8x8x16)."""
    seq_len, block, q_heads = 512, 64, 4
    indices = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (1, seq_len))

    def layers(q, k, v, segments):
        def layer(x, _):
            out = blockwise_attention_at(x, k, v, segments, segments, indices, indices, block_q=block, block_kv=block)
            return x + out, None

        return jnp.sum(jax.lax.scan(jax.checkpoint(layer), q, None, length=2)[0])

    q = jax.ShapeDtypeStruct((1, seq_len, q_heads, 32), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, seq_len, 2, 32), jnp.float32)
    segments = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
    text = jax.jit(jax.grad(layers, argnums=(0, 1, 2))).lower(q, kv, kv, segments).as_text()
    one_block_of_scores = q_heads * block * block
    assert 0 < _largest_score_stack(text, block) <= one_block_of_scores
