"""Causal self-attention over packed rows, with one entry point and a kernel chosen per platform.

Every implementation takes the same arguments:
    q            (batch, q_len, n_q_heads, head_dim)
    k, v         (batch, kv_len, n_kv_heads, head_dim), n_q_heads a multiple of n_kv_heads (GQA)
    segment_ids  (batch, len) int32; tokens attend only to earlier tokens with the same id. Id 0 marks padding.
Packed documents are contiguous within a row, so "causal by index" and "same segment" together give
exactly per-document causal attention; RoPE positions are applied to q and k before this point.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.errors import XgenError
from xgen_core.model.blockwise import blockwise_attention
from xgen_core.model.context_parallel import context_parallel_attention_at

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "flash", "blockwise")
PLATFORM_OF_IMPL = {"cudnn": "gpu", "splash": "tpu", "flash": "tpu"}
DEFAULT_IMPL_OF_PLATFORM = {"tpu": "splash", "gpu": "cudnn"}
PALLAS_LENGTH_MULTIPLE = 128


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """Turn "auto" into the best kernel of the platform and refuse a kernel the platform cannot run."""
    platform = platform or jax.default_backend()
    if impl == "auto":
        return DEFAULT_IMPL_OF_PLATFORM.get(platform, "xla")
    if impl not in IMPLEMENTATIONS:
        raise XgenError(f"unknown attention implementation {impl!r}; choose auto or one of {IMPLEMENTATIONS}")
    needed = PLATFORM_OF_IMPL.get(impl)
    if needed and needed != platform:
        raise XgenError(f"attention implementation {impl!r} runs only on {needed}, this JAX backend is {platform}")
    return impl


def length_multiple(impl: str) -> int:
    """Sequence lengths the kernel `impl` accepts are multiples of this: the Pallas kernels' 128-token blocks
    (`_pallas_block`), any length otherwise. Callers that choose a padded length round up to it."""
    impl = resolve_impl(impl) if impl == "auto" else impl
    return PALLAS_LENGTH_MULTIPLE if impl in ("splash", "flash") else 1


def attention(q, k, v, segment_ids, *, impl: str = "auto", row_indices=None):
    """Per-document causal attention with the implementation `impl` (auto, xla, cudnn, splash, flash, blockwise).

    blockwise (xgen_core/model/blockwise.py) is the portable kernel whose memory is linear in length. A named kernel
    was checked against its target platform where the model was built (build_model), which for an ahead-of-time TPU
    compile is not this process's backend; only "auto" is resolved here. `row_indices` (given by the decoder when
    the mesh splits the sequence over a context axis) means rows in the context axis's order: context-parallel
    blockwise attention, whatever `impl`."""
    if row_indices is not None:
        return context_parallel_attention_at(q, k, v, segment_ids, row_indices)
    if impl == "auto" or impl not in IMPLEMENTATIONS:
        impl = resolve_impl(impl)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, segment_ids)
    if impl == "xla":
        return xla_attention(q, k, v, segment_ids)
    if impl == "cudnn":
        return jax_nn_attention(q, k, v, segment_ids, implementation="cudnn")
    if impl == "splash":
        return per_device_shard(splash_attention)(q, k, v, segment_ids)
    return per_device_shard(flash_attention)(q, k, v, segment_ids)


def per_device_shard(kernel):
    """Run a Pallas kernel on each device's own rows and heads under shard_map.

    XLA cannot partition a Pallas call: on a sharded mesh it would gather the whole batch onto every device.
    Rows split over the batch axes and heads over the tensor axis as the activations are (the logical rules in
    force, xgen_core/train/mesh.py); query and key/value heads split into the same number of contiguous
    groups, so each device's query heads find their shared key/value heads locally. Outside a mesh the kernel
    runs as it is.
    """

    def call(q, k, v, segment_ids):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.size == 1:
            return kernel(q, k, v, segment_ids)
        heads = nn.logical_to_mesh_axes(
            ("activation_batch", "activation_length", "activation_heads", "activation_kv"))
        rows = nn.logical_to_mesh_axes(("activation_batch", "activation_length"))
        return jax.shard_map(
            kernel, in_specs=(heads, heads, heads, rows), out_specs=heads, check_vma=False,
        )(q, k, v, segment_ids)

    return call


def document_causal_mask(q_segment_ids, kv_segment_ids, q_offset: int = 0):
    """(batch, 1, q_len, kv_len) bool: same non-padding segment and key not after query.

    `q_offset` is the row position of the first query (queries taken in blocks)."""
    q_len, kv_len = q_segment_ids.shape[1], kv_segment_ids.shape[1]
    causal = (q_offset + jnp.arange(q_len))[:, None] >= jnp.arange(kv_len)[None, :]
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    not_padding = (kv_segment_ids > 0)[:, None, :]
    return (causal[None] & same_segment & not_padding)[:, None]


XLA_QUERY_BLOCK = 128


def xla_attention(q, k, v, segment_ids, query_block: int = XLA_QUERY_BLOCK):
    """Einsum attention, softmax in float32, GQA without repeating K and V, with a hand-written backward.

    Queries go in blocks, each against the keys up to its own end only: the fully masked upper triangle
    of the score matrix is never computed, which on a CPU (where the score tensor's memory traffic costs
    more than its matmuls) saves up to half the time.
    """
    q_len = q.shape[1]
    if q_len <= query_block or q_len % query_block:
        return _attention_block(q, k, v, segment_ids, segment_ids, 0)
    blocks = []
    for start in range(0, q_len, query_block):
        end = start + query_block
        blocks.append(_attention_block(
            q[:, start:end], k[:, :end], v[:, :end], segment_ids[:, start:end], segment_ids[:, :end], start
        ))
    return jnp.concatenate(blocks, axis=1)


def _scores_to_probabilities(q, k, q_segment_ids, kv_segment_ids, q_offset: int):
    """Normalised attention weights (batch, kv_heads, group, q_len, kv_len) in float32."""
    batch, q_len, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    grouped_q = q.reshape(batch, q_len, n_kv_heads, n_q_heads // n_kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", grouped_q, k, preferred_element_type=jnp.float32)
    logits = logits * np.float32(1 / np.sqrt(head_dim))
    mask = document_causal_mask(q_segment_ids, kv_segment_ids, q_offset)[:, :, None]  # (b, 1, 1, t, s)
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_block(q, k, v, q_segment_ids, kv_segment_ids, q_offset: int):
    return _attention_block_fwd(q, k, v, q_segment_ids, kv_segment_ids, q_offset)[0]


def _attention_block_fwd(q, k, v, q_segment_ids, kv_segment_ids, q_offset):
    batch, q_len, n_q_heads, head_dim = q.shape
    weights = _scores_to_probabilities(q, k, q_segment_ids, kv_segment_ids, q_offset).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", weights, v, preferred_element_type=jnp.float32)
    out = out.reshape(batch, q_len, n_q_heads, head_dim).astype(q.dtype)
    # The weights (in the compute dtype, as the value product read them) are kept for the backward pass
    # instead of recomputing scores, mask and softmax there.
    return out, (q, k, v, weights, out, q_segment_ids, kv_segment_ids)


def _attention_block_bwd(q_offset, residuals, d_out):
    """Softmax attention's backward pass with every product in the compute dtype, accumulating in float32.

    Autodiff of the forward would take float32 cotangents into the products (the forward accumulates in
    float32), and XLA:CPU runs such mixed products as float32 matmuls, several times slower.
    """
    q, k, v, weights, out, q_segment_ids, kv_segment_ids = residuals
    batch, q_len, n_q_heads, head_dim = q.shape
    n_kv_heads = k.shape[2]
    group = n_q_heads // n_kv_heads
    grouped = functools.partial(jnp.reshape, shape=(batch, q_len, n_kv_heads, group, head_dim))
    d_out = grouped(d_out.astype(q.dtype))
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    d_v = f32("bkgts,btkgd->bskd", weights, d_out).astype(v.dtype)
    d_weights = f32("btkgd,bskd->bkgts", d_out, v)
    # Softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O).
    delta = jnp.einsum("btkgd,btkgd->bkgt", d_out.astype(jnp.float32), grouped(out).astype(jnp.float32))
    d_logits = weights.astype(jnp.float32) * (d_weights - delta[..., None]) * np.float32(1 / np.sqrt(head_dim))
    d_logits = d_logits.astype(q.dtype)
    d_q = f32("bkgts,bskd->btkgd", d_logits, k).reshape(q.shape).astype(q.dtype)
    d_k = f32("bkgts,btkgd->bskd", d_logits, grouped(q)).astype(k.dtype)
    no_grad = functools.partial(np.zeros, dtype=jax.dtypes.float0)
    return d_q, d_k, d_v, no_grad(q_segment_ids.shape), no_grad(kv_segment_ids.shape)


_attention_block.defvjp(_attention_block_fwd, _attention_block_bwd)


def jax_nn_attention(q, k, v, segment_ids, *, implementation: str):
    """jax.nn.dot_product_attention with the document mask passed explicitly.

    cuDNN's causal mask type alone knows nothing of documents, so the segment mask must go in as `mask`
    (cuDNN turns it into a dense bias). `implementation="xla"` runs this same call on CPU, which is how
    the tests check the arguments the cuDNN path receives.
    """
    mask = document_causal_mask(segment_ids, segment_ids)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=implementation)


def _pallas_block(seq_len: int, preferred: int = 512) -> int:
    """The largest block of at most `preferred` tokens, a multiple of 128, that divides `seq_len` (1,280: 256)."""
    for block in range(min(preferred, seq_len) // PALLAS_LENGTH_MULTIPLE * PALLAS_LENGTH_MULTIPLE, 0,
                       -PALLAS_LENGTH_MULTIPLE):
        if seq_len % block == 0:
            return block
    raise XgenError(f"Pallas attention needs a sequence length that is a multiple of {PALLAS_LENGTH_MULTIPLE}, "
                    f"got {seq_len}")


def splash_attention(q, k, v, segment_ids, *, interpret: bool = False):
    """TPU Pallas splash attention (GQA-native) with SegmentIds; `interpret=True` runs the kernel on CPU."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    batch, seq_len, n_q_heads, head_dim = q.shape
    block = _pallas_block(seq_len)
    block_sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    causal = splash.MultiHeadMask([splash.CausalMask((seq_len, seq_len))] * n_q_heads)
    kernel = splash.make_splash_mha(
        mask=causal, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )
    # Splash does not scale the logits itself; heads go first in its layout.
    q_heads_first = jnp.swapaxes(q / np.sqrt(head_dim).astype(q.dtype), 1, 2)
    k_heads_first, v_heads_first = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    segments = splash.SegmentIds(q=segment_ids, kv=segment_ids)
    out = jax.vmap(kernel)(q_heads_first, k_heads_first, v_heads_first, segment_ids=segments)
    return jnp.swapaxes(out, 1, 2)


def flash_attention(q, k, v, segment_ids, *, interpret: bool = False):
    """TPU Pallas flash attention with SegmentIds (MHA only, so K and V are repeated for GQA)."""
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas.ops.tpu import flash_attention as flash

    seq_len, n_q_heads, head_dim = q.shape[1], q.shape[2], q.shape[3]
    block = _pallas_block(seq_len)
    block_sizes = flash.BlockSizes(
        block_q=block, block_k_major=block, block_k=block, block_b=1,
        block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block, block_q_dkv=block,
        block_k_major_dq=block, block_k_dq=block, block_q_dq=block,
    )
    repeat = functools.partial(jnp.repeat, repeats=n_q_heads // k.shape[2], axis=2)
    q_bhtd, k_bhtd, v_bhtd = (jnp.swapaxes(x, 1, 2) for x in (q, repeat(k), repeat(v)))
    run_kernel = functools.partial(
        flash.flash_attention,
        segment_ids=flash.SegmentIds(q=segment_ids, kv=segment_ids),
        causal=True, sm_scale=1.0 / np.sqrt(head_dim), block_sizes=block_sizes,
    )
    if interpret:
        with pltpu.force_tpu_interpret_mode():
            out = run_kernel(q_bhtd, k_bhtd, v_bhtd)
    else:
        out = run_kernel(q_bhtd, k_bhtd, v_bhtd)
    return jnp.swapaxes(out, 1, 2)
