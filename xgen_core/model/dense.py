"""Weight matmuls whose forward and backward dots all reach the fast low-precision kernel of the backend.

`dense(x, kernel)` multiplies activations by a float32 parameter in the compute dtype, accumulating in
float32 (MaxText's `preferred_element_type`), and returns the compute dtype (or float32 for the logits).

Why not plain `x @ kernel.astype(bf16)`: XLA:CPU runs a bf16 dot on its fast library kernel (YNNPACK,
AMX/AVX512-BF16 on Sapphire Rapids) only when the dot reads bf16, writes float32, and its left operand is
contracted over its minor dimension. A bf16 -> bf16 dot, or the weight gradient x^T @ g (both operands
contracted over their token dimension), fails that test, and XLA then upcasts both operands to float32 and
runs a float32 dot, 3-4x slower. So on CPU this module owns the backward pass (a custom VJP):

    forward   y  = x @ w                  bf16 x bf16 -> f32
    backward  dx = g @ w^T                bf16 x bf16 -> f32 (w^T is read in place)
              dw = T(x) @ g               bf16 x bf16 -> f32, T(x) a materialised transpose

The weight gradient stays float32 (it is never rounded to bf16 before reaching the float32 parameter).
On GPU/TPU, and for float32 compute, this is the plain einsum with float32 accumulation, which their
compilers already lower well.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def dense(x, kernel, compute_dtype, *, contract: int = 1, out_dtype=None, kernel_transposed: bool = False):
    """Contract the last `contract` axes of `x` with the first `contract` axes of `kernel`.

    With `kernel_transposed` the kernel is (N, K) and the contraction is over its last axis (a tied
    output projection reading the (vocab, d_model) embedding). Returns `out_dtype` (default: compute
    dtype); the products always accumulate in float32.
    """
    out_dtype = jnp.dtype(out_dtype or compute_dtype)
    compute_dtype = jnp.dtype(compute_dtype)
    batch_shape = x.shape[: x.ndim - contract]
    k = math.prod(x.shape[x.ndim - contract:])
    if kernel_transposed:
        if contract != 1:
            raise ValueError("a transposed kernel is contracted over one axis")
        out_shape = kernel.shape[:1]
        w = kernel
    else:
        out_shape = kernel.shape[contract:]
        w = kernel.reshape(k, math.prod(out_shape))
    x2 = x.reshape(-1, k)
    if _use_custom_backward(compute_dtype):
        y = _matmul(x2, w, (compute_dtype, out_dtype, x2.dtype, w.dtype), kernel_transposed)
    else:
        y = _dot(x2.astype(compute_dtype), w.astype(compute_dtype), kernel_transposed).astype(out_dtype)
    return y.reshape(*batch_shape, *out_shape)


def _use_custom_backward(compute_dtype) -> bool:
    return jax.default_backend() == "cpu" and compute_dtype != jnp.float32


def _dot(a, b, b_transposed: bool = False):
    """a (M, K) @ b (K, N), or b (N, K) read transposed; float32 accumulation and result."""
    contracting = ((1,), (1,)) if b_transposed else ((1,), (0,))
    return jax.lax.dot_general(a, b, (contracting, ((), ())), preferred_element_type=jnp.float32)


# A contraction longer than this is summed from products over slices of it: YNNPACK's bf16 kernel
# slows down on very long ones (the tied output projection's input gradient, 4096 x 32768 x 1024:
# 0.63 TFLOP/s in one product, 0.91 TFLOP/s as 8 products of 4096-long slices, 2-core Sapphire Rapids).
LONG_CONTRACTION = 8192
CONTRACTION_SLICE = 4096


def _dot_long(a, b, b_transposed: bool = False):
    """`_dot`, summing slices of the contraction when it is longer than LONG_CONTRACTION."""
    k = a.shape[1]
    if k <= LONG_CONTRACTION or k % CONTRACTION_SLICE:
        return _dot(a, b, b_transposed)
    total = None
    for start in range(0, k, CONTRACTION_SLICE):
        piece = slice(start, start + CONTRACTION_SLICE)
        part = _dot(a[:, piece], b[:, piece] if b_transposed else b[piece], b_transposed)
        total = part if total is None else total + part
    return total


def materialized_transpose(a):
    """a.T as an array of its own, row-major.

    Left to itself XLA folds a transpose into the neighbouring dot's dimension numbers (the consumer's,
    or the producer's by swapping its operands), which gives exactly the operand form the CPU library
    kernel rejects. Optimization barriers on both sides keep the transpose a separate copy; the unit axis
    keeps the outer barrier's operand at XLA's default layout, so the dot after it is judged on a plain
    row-major operand (a barrier straight on a transpose inherits the transposed layout).
    """
    barrier = jax.lax.optimization_barrier
    return barrier(barrier(a).T[None])[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x, w, dtypes, w_transposed):
    """dtypes: (compute, output, x, w)."""
    return _matmul_fwd(x, w, dtypes, w_transposed)[0]


def _matmul_fwd(x, w, dtypes, w_transposed):
    compute_dtype, out_dtype = dtypes[:2]
    xc, wc = x.astype(compute_dtype), w.astype(compute_dtype)
    y = _dot(xc, wc, w_transposed).astype(out_dtype)
    # The residuals are the compute-dtype copies: the backward pass re-reads them without casting again.
    return y, (xc, wc)


def _matmul_bwd(dtypes, w_transposed, residuals, g):
    compute_dtype, _, x_dtype, w_dtype = dtypes
    xc, wc = residuals
    gc = g.astype(compute_dtype)
    # dx = g @ w^T: with w (K, N) that is g contracted with w's minor axis, with w (N, K) a plain product.
    dx = _dot_long(gc, wc, b_transposed=not w_transposed).astype(x_dtype)
    dw = _dot(materialized_transpose(xc), gc)  # (K, N), float32
    if w_transposed:
        dw = materialized_transpose(dw)
    return dx, dw.astype(w_dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)
