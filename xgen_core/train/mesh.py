"""Device mesh with `data`, `fsdp`, `context` and `tensor` axes, and the rules mapping logical axis names onto it.

Parameters carry logical names (xgen_core/model/layers.py); LOGICAL_RULES says which mesh axis each name
is split over. Weights are split over `fsdp` x `context` along their embedding dimension and over `tensor` along
heads / MLP / vocabulary; activations are split over `data` and `fsdp` along the batch and over `context` along
the sequence (context parallelism, xgen_core/model/context_parallel.py; size 1 unless a stage asks for it).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from xgen_core.errors import XgenError
from xgen_core.model.context_parallel import CONTEXT_AXIS

MESH_AXES = ("data", "fsdp", CONTEXT_AXIS, "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES = (
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", ("fsdp", CONTEXT_AXIS)),  # the context axis holds a share of the weights too (as in MaxText)
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("norm", None),
    ("activation_batch", BATCH_AXES),
    ("activation_length", CONTEXT_AXIS),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", "tensor"),
)


def maybe_initialize_distributed(enabled: bool) -> None:
    """Join a multi-host job (TPU slice, GKE): coordinator and process ids come from the environment.

    Must run before anything touches a JAX backend (even jax.process_count() would start one)."""
    if enabled and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def mesh_shape(data: int, fsdp: int, tensor: int, device_count: int) -> tuple[int, int, int]:
    """Resolve one axis given as -1 to "all remaining devices" and check the product."""
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise XgenError("at most one mesh axis may be -1")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if device_count % known:
            raise XgenError(f"{device_count} devices do not divide into mesh axes {shape}")
        shape[shape.index(-1)] = device_count // known
    if math.prod(shape) != device_count:
        raise XgenError(f"mesh data={shape[0]} fsdp={shape[1]} tensor={shape[2]} needs {math.prod(shape)} "
                        f"devices, have {device_count}")
    return tuple(shape)


def make_mesh(data: int, fsdp: int, tensor: int, devices=None, context: int = 1) -> jax.sharding.Mesh:
    """Mesh over `devices` (default: all), `context` of them along the sequence and data x fsdp x tensor over
    the rest. Auto axes: the compiler propagates shardings from the annotated inputs and the logical
    constraints (Explicit axes would turn every constraint into an assertion)."""
    devices = jax.devices() if devices is None else devices
    if context < 1 or len(devices) % context:
        raise XgenError(f"context parallelism over {context} devices does not divide {len(devices)} devices")
    data, fsdp, tensor = mesh_shape(data, fsdp, tensor, len(devices) // context)
    shape, axis_types = (data, fsdp, context, tensor), (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    except NotImplementedError:
        # A TPU slice's devices are laid out along its physical axes (8 x 8 x 16 for v5p:8x8x16), and make_mesh
        # wants each mesh axis to be a product of whole physical axes; 32 devices along `context` there are one
        # physical axis of 16 and half of one of 8 (what MaxText's allow_split_physical_axes allows).
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)



def logical_shardings(boxed_tree, mesh):
    """NamedShardings for a pytree whose leaves carry logical axis names (nn.LogicallyPartitioned)."""
    return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, LOGICAL_RULES)


def batch_sharding(mesh, ndim: int, batch_axis: int = 0) -> NamedSharding:
    spec = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
