"""Every attention implementation must keep tokens inside their own document (some kernels ignore segment ids)."""

import jax.numpy as jnp
import numpy as np
import pytest

from xgen_core.errors import XgenError
from xgen_core.model import attention as attn

BATCH, SEQ, Q_HEADS, KV_HEADS, HEAD_DIM = 2, 128, 4, 2, 32
# Row 0: three documents (lengths 40, 70, 18); row 1: one document then 20 padding tokens.
SEGMENTS = np.stack([
    np.repeat([1, 2, 3], [40, 70, 18]),
    np.concatenate([np.ones(108, int), np.zeros(20, int)]),
]).astype(np.int32)


def random_qkv(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(BATCH, SEQ, Q_HEADS, HEAD_DIM)).astype(np.float32)
    k = rng.normal(size=(BATCH, SEQ, KV_HEADS, HEAD_DIM)).astype(np.float32)
    v = rng.normal(size=(BATCH, SEQ, KV_HEADS, HEAD_DIM)).astype(np.float32)
    return jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)


def per_document_reference(q, k, v, segments):
    """Plain causal attention run on each document alone, written without the library's mask code."""
    out = np.zeros(q.shape, np.float32)
    group = Q_HEADS // KV_HEADS
    for b in range(BATCH):
        for segment in set(segments[b].tolist()) - {0}:
            idx = np.flatnonzero(segments[b] == segment)
            qd, kd, vd = (np.asarray(x[b, idx], np.float64) for x in (q, k, v))
            for h in range(Q_HEADS):
                scores = qd[:, h] @ kd[:, h // group].T / np.sqrt(HEAD_DIM)
                scores = np.where(np.tril(np.ones_like(scores, bool)), scores, -np.inf)
                weights = np.exp(scores - scores.max(-1, keepdims=True))
                out[b, idx, h] = (weights / weights.sum(-1, keepdims=True)) @ vd[:, h // group]
    return out


IMPLEMENTATIONS_ON_CPU = {
    "xla": lambda q, k, v, s: attn.xla_attention(q, k, v, s),
    # The exact call the cuDNN path makes, with jax's XLA backend standing in for cuDNN.
    "cudnn-arguments": lambda q, k, v, s: attn.jax_nn_attention(q, k, v, s, implementation="xla"),
    "splash-interpret": lambda q, k, v, s: attn.splash_attention(q, k, v, s, interpret=True),
    "flash-interpret": lambda q, k, v, s: attn.flash_attention(q, k, v, s, interpret=True),
}


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS_ON_CPU))
def test_implementation_honours_segment_ids(name):
    q, k, v = random_qkv()
    out = np.asarray(IMPLEMENTATIONS_ON_CPU[name](q, k, v, jnp.asarray(SEGMENTS)))
    expected = per_document_reference(q, k, v, SEGMENTS)
    real = SEGMENTS > 0  # padding rows' outputs are never used
    np.testing.assert_allclose(out[real], expected[real], atol=2e-5, rtol=1e-4)


def test_reference_would_catch_ignored_segments():
    q, k, v = random_qkv()
    ignoring_segments = np.asarray(attn.xla_attention(q, k, v, jnp.ones_like(jnp.asarray(SEGMENTS))))
    expected = per_document_reference(q, k, v, SEGMENTS)
    second_document = SEGMENTS[0] == 2
    assert np.abs(ignoring_segments[0, second_document] - expected[0, second_document]).max() > 1e-2


def test_auto_picks_the_platform_kernel():
    assert attn.resolve_impl("auto", "cpu") == "xla"
    assert attn.resolve_impl("auto", "gpu") == "cudnn"
    assert attn.resolve_impl("auto", "tpu") == "splash"


@pytest.mark.parametrize("impl,platform", [("cudnn", "cpu"), ("splash", "cpu"), ("flash", "gpu"), ("cudnn", "tpu")])
def test_kernel_refused_off_its_platform(impl, platform):
    with pytest.raises(XgenError, match="runs only on"):
        attn.resolve_impl(impl, platform)


def test_unknown_implementation_refused():
    with pytest.raises(XgenError, match="unknown attention"):
        attn.resolve_impl("triton", "cpu")


def test_pallas_kernels_need_block_multiple():
    with pytest.raises(XgenError, match="multiple of 128"):
        attn._pallas_block(200)
    # a multiple of 128 that 512 does not divide (GRPO's 1,024 new tokens + a 256-token prompt) takes 256
    assert (attn._pallas_block(1280), attn._pallas_block(384), attn._pallas_block(4096)) == (256, 384, 512)


def test_blocked_xla_attention_matches_one_block():
    """Query blocks against key prefixes give the same result as the full score matrix."""
    q, k, v = random_qkv(seed=3)
    segments = jnp.asarray(SEGMENTS)
    blocked = attn.xla_attention(q, k, v, segments, query_block=32)
    whole = attn.xla_attention(q, k, v, segments, query_block=SEQ)
    np.testing.assert_allclose(blocked, whole, atol=1e-5)


@pytest.mark.parametrize("query_block", [32, SEQ])
def test_xla_attention_gradients_match_autodiff_of_the_reference_call(query_block):
    """The hand-written backward pass against autodiff of jax.nn.dot_product_attention, real tokens only."""
    import jax

    q, k, v = random_qkv(seed=4)
    segments = jnp.asarray(SEGMENTS)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32) * (segments > 0)[..., None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)

    ours = jax.grad(loss(lambda q, k, v: attn.xla_attention(q, k, v, segments, query_block)), argnums=(0, 1, 2))
    reference = jax.grad(loss(lambda q, k, v: attn.jax_nn_attention(q, k, v, segments, implementation="xla")),
                         argnums=(0, 1, 2))
    for got, expected in zip(ours(q, k, v), reference(q, k, v)):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_xla_attention_backward_in_bfloat16_stays_close_to_float32():
    import jax

    q, k, v = random_qkv(seed=6)
    segments = jnp.asarray(SEGMENTS)
    grad = jax.grad(lambda q, k, v: jnp.sum(attn.xla_attention(q, k, v, segments, 32).astype(jnp.float32) ** 2),
                    argnums=(0, 1, 2))
    exact = grad(q, k, v)
    low = grad(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    for got, expected in zip(low, exact):
        assert got.dtype == jnp.bfloat16
        scale = float(jnp.abs(expected).max())
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=0.03 * scale)
