"""Context (sequence) parallelism: attention over a sequence split across the devices of one mesh axis.

Each device keeps its share of the queries and all-gathers keys, values, segment ids and row indices over the
context axis (MaxText's all-gather context parallelism), then runs the blockwise kernel of
xgen_core/model/blockwise.py on its queries against the whole row. The gradient of the all-gather is a
reduce-scatter, so every device gets back the key/value gradient of its own share.

Causal load balancing (MaxText's `reorder_sequence`): with the row cut into cp equal pieces in order, the device
holding the last piece would attend to the whole row and the first to almost nothing. The row is instead cut
into 2 x cp chunks and device r holds chunk r and its mirror image 2 x cp - 1 - r, so every device does the same
work. The reorder is a fixed permutation applied before the shard_map and undone after it; since masks are
built from row indices and segment ids that travel with the tokens, the result is the single-device result.

`context_parallel_attention` takes rows in natural order and reorders around each call. The decoder
(xgen_core/model/decoder.py) instead reorders its input tokens once when the mesh in force has a `context` axis of
more than one device, passes the row indices down, calls `context_parallel_attention_at` in every layer and restores
the order once before the output head: one permutation per step instead of four per layer.

The local kernel is the portable blockwise one on every backend (on a TPU it compiles through XLA): the splash
kernel's masks are static per call, and a device's load-balanced queries need masks that depend on which device
it is, so a Pallas kernel would need a mask per shard (MaxText's load-balanced causal mask); not built here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from xgen_core.errors import XgenError
from xgen_core.model.blockwise import DEFAULT_BLOCK, blockwise_attention_at

CONTEXT_AXIS = "context"


def context_shards() -> int:
    """Devices along the context axis of the mesh in force (1 outside a mesh or without that axis)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty else dict(mesh.shape).get(CONTEXT_AXIS, 1)


def load_balanced_order(seq_len: int, shards: int) -> np.ndarray:
    """Row positions in the order the context axis holds them: chunk r and chunk 2 x shards - 1 - r per shard."""
    chunks = 2 * shards
    if seq_len % chunks:
        raise XgenError(f"context parallelism over {shards} devices needs a sequence length divisible by "
                        f"{chunks}, got {seq_len}")
    chunk = seq_len // chunks
    order = []
    for shard in range(shards):
        for piece in (shard, chunks - 1 - shard):
            order.extend(range(piece * chunk, (piece + 1) * chunk))
    return np.asarray(order, np.int32)


def context_parallel_attention(q, k, v, segment_ids, *, mesh, axis: str = "context",
                               batch_axes=None, block: int = DEFAULT_BLOCK, load_balance: bool = True):
    """Per-document causal attention with the sequence split over mesh axis `axis` (all-gather of K and V).

    Arguments are laid out as in xgen_core/model/attention.py and hold whole rows in natural order;
    `batch_axes` names mesh axes the batch is split over as well (None: replicated).
    """
    shards = mesh.shape[axis]
    seq_len = q.shape[1]
    order = load_balanced_order(seq_len, shards) if load_balance else np.arange(seq_len, dtype=np.int32)
    restore = np.argsort(order)
    indices = jnp.broadcast_to(jnp.asarray(order), segment_ids.shape)
    reorder = functools.partial(jnp.take, indices=jnp.asarray(order), axis=1)
    tokens_spec, heads_spec = P(batch_axes, axis), P(batch_axes, axis, None, None)
    local_block = min(block, seq_len // shards)
    sharded = jax.shard_map(
        functools.partial(_local_attention, axis=axis, block=local_block),
        mesh=mesh,
        in_specs=(heads_spec, heads_spec, heads_spec, tokens_spec, tokens_spec),
        out_specs=heads_spec,
        # The kernel's loop carries start as constants and become device-varying inside lax.cond; without
        # the varying-axes check they need no pcast (the all-gather's transpose is a reduce-scatter either way).
        check_vma=False,
    )
    out = sharded(reorder(q), reorder(k), reorder(v), reorder(segment_ids), indices)
    return jnp.take(out, jnp.asarray(restore), axis=1)


def _local_attention(q, k, v, segment_ids, indices, *, axis: str, block: int):
    gather = functools.partial(jax.lax.all_gather, axis_name=axis, axis=1, tiled=True)
    return blockwise_attention_at(
        q, gather(k), gather(v), segment_ids, gather(segment_ids), indices, gather(indices),
        block_q=block, block_kv=block,
    )


def context_parallel_attention_at(q, k, v, segment_ids, row_indices, *, block: int = DEFAULT_BLOCK):
    """Attention of rows already in the context axis's order (`load_balanced_order`), with `row_indices` (batch,
    len) their positions in the row, under the mesh in force: split as the logical rules split activations
    (batch over the batch axes, length over `context`, heads over `tensor`)."""
    import flax.linen as nn

    heads_spec = nn.logical_to_mesh_axes(("activation_batch", "activation_length", "activation_heads", "activation_kv"))
    tokens_spec = nn.logical_to_mesh_axes(("activation_batch", "activation_length"))
    local_block = min(block, q.shape[1] // context_shards())
    sharded = jax.shard_map(
        functools.partial(_local_attention, axis=CONTEXT_AXIS, block=local_block),
        in_specs=(heads_spec, heads_spec, heads_spec, tokens_spec, tokens_spec), out_specs=heads_spec,
        check_vma=False,  # as in context_parallel_attention
    )
    return sharded(q, k, v, segment_ids, row_indices)
