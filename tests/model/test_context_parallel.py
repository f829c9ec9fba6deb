"""Context-parallel attention on 8 fake CPU devices equals one device, output and gradients, with packed documents."""

import numpy as np
import pytest

from tests.fake_devices import run_on_fake_devices
from xgen_core.errors import XgenError
from xgen_core.model.context_parallel import load_balanced_order

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType
from xgen_core.model.attention import xla_attention
from xgen_core.model.context_parallel import context_parallel_attention

assert jax.device_count() == 8
rng = np.random.default_rng(0)
batch, seq, heads, kv_heads, dim = 2, 256, 4, 2, 16
q = jnp.asarray(rng.normal(size=(batch, seq, heads, dim)), jnp.float32)
k = jnp.asarray(rng.normal(size=(batch, seq, kv_heads, dim)), jnp.float32)
v = jnp.asarray(rng.normal(size=(batch, seq, kv_heads, dim)), jnp.float32)
# Documents cross the chunk and device boundaries; row 1 ends in padding.
segments = np.stack([np.repeat([1, 2, 3, 4], [37, 100, 90, 29]), np.repeat([1, 2, 0], [150, 80, 26])]).astype(np.int32)
weights = rng.normal(size=q.shape).astype(np.float32) * (segments > 0)[..., None, None]

def loss_and_grads(attend):
    def loss(q, k, v):
        out = attend(q, k, v, jnp.asarray(segments))
        return jnp.sum(out * weights), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]

real = segments > 0
single_out, single_grads = loss_and_grads(xla_attention)
result = {}
for name, shape, axes, batch_axes in (("context8", (8,), ("context",), None),
                                      ("data2_context4", (2, 4), ("data", "context"), "data")):
    mesh = jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes))
    for balanced in ((True, False) if batch_axes is None else (True,)):
        attend = lambda q, k, v, s: context_parallel_attention(
            q, k, v, s, mesh=mesh, batch_axes=batch_axes, block=16, load_balance=balanced)
        out, grads = loss_and_grads(attend)
        result[f"{name}_{'balanced' if balanced else 'contiguous'}"] = {
            "out": float(np.abs(out - single_out)[real].max()),
            "grads": [float(np.abs(a - b).max()) for a, b in zip(grads, single_grads)],
        }
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def differences():
    return run_on_fake_devices(SCRIPT)


@pytest.mark.parametrize("layout", ["context8_balanced", "context8_contiguous", "data2_context4_balanced"])
def test_context_parallel_matches_one_device(differences, layout):
    assert differences[layout]["out"] < 2e-5
    assert max(differences[layout]["grads"]) < 5e-5


def test_load_balanced_order_pairs_each_chunk_with_its_mirror():
    order = load_balanced_order(16, 2)  # 4 chunks of 4: device 0 holds chunks 0 and 3, device 1 chunks 1 and 2
    assert order.tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 4, 5, 6, 7, 8, 9, 10, 11]
    # Every device then owns the same number of causal (query, key) pairs.
    pairs = [sum(int(i) + 1 for i in half) for half in np.split(load_balanced_order(1024, 8), 8)]
    assert len(set(pairs)) == 1


def test_length_must_split_into_twice_the_devices():
    with pytest.raises(XgenError, match="divisible by 16"):
        load_balanced_order(100, 8)
