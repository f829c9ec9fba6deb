"""dense(): the weight matmul with its own backward pass (CPU, low precision) against plain autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xgen_core.model.dense import dense


def reference(x, kernel, contract, transposed):
    """Autodiff of the same product written with einsum: bf16 operands, float32 accumulation."""
    kernel = kernel.astype(jnp.bfloat16)
    if transposed:
        return jnp.einsum("...k,nk->...n", x, kernel, preferred_element_type=jnp.float32)
    k = int(np.prod(x.shape[x.ndim - contract:]))
    flat = jnp.einsum("...k,kn->...n", x.reshape(*x.shape[:x.ndim - contract], k),
                      kernel.reshape(k, -1), preferred_element_type=jnp.float32)
    return flat.reshape(*x.shape[:x.ndim - contract], *kernel.shape[contract:])


@pytest.mark.parametrize("kernel_shape,contract,transposed", [
    ((16, 24), 1, False),          # MLP-style (d_model, mlp)
    ((16, 4, 8), 1, False),        # projection to heads (d_model, heads, head_dim)
    ((4, 4, 16), 2, False),        # output projection (heads, head_dim, d_model), x (..., heads, head_dim)
    ((40, 16), 1, True),           # tied logits: the (vocab, d_model) embedding read transposed
    ((16384, 16), 1, True),        # a vocabulary long enough that dx sums slices of the contraction
    ((16, 12288), 1, False),       # the same for an untied head (d_model, vocab)
])
def test_dense_values_and_gradients_match_autodiff(kernel_shape, contract, transposed):
    rng = np.random.default_rng(0)
    x_shape = (2, 8, 4, 4) if contract == 2 else (2, 8, 16)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w).astype(jnp.float32)))

    ours = lambda x, w: dense(x, w, jnp.bfloat16, contract=contract, out_dtype=jnp.float32,
                              kernel_transposed=transposed)
    ref = lambda x, w: reference(x, w, contract, transposed)
    np.testing.assert_allclose(ours(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
    (dx, dw), (ref_dx, ref_dw) = (jax.jit(jax.grad(loss(fn), argnums=(0, 1)))(x, kernel) for fn in (ours, ref))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    # Our backward rounds the cotangent to bf16 before its products (the reference keeps it float32), so
    # compare against the gradient's scale rather than elementwise: long sums may cancel to near zero.
    for got, expected in ((dx, ref_dx), (dw, ref_dw)):
        expected = np.asarray(expected, np.float32)
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=1e-2 * np.abs(expected).max())


def test_dense_returns_the_compute_dtype_unless_told():
    x = jnp.ones((2, 3, 8), jnp.bfloat16)
    w = jnp.ones((8, 5), jnp.float32)
    assert dense(x, w, jnp.bfloat16).dtype == jnp.bfloat16
    assert dense(x, w, jnp.bfloat16, out_dtype=jnp.float32).dtype == jnp.float32
    assert dense(x.astype(jnp.float32), w, jnp.float32).dtype == jnp.float32
