"""The train step with each sequence split over a `context` mesh axis (8 fake CPU devices) matches one device."""

import pytest

from tests.fake_devices import run_on_fake_devices

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, optax
from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.step import device_batch, init_state, make_train_step, state_shardings

assert jax.device_count() == 8
rng = np.random.default_rng(0)
shape = (1, 4, 33)  # 1 accumulation step x 4 rows x (32 + 1) tokens
# Documents cross the context shards' chunk boundaries (chunks of 4 tokens at 4 shards); row ends in padding.
segments = np.repeat([1, 2, 3, 0], [7, 13, 10, 3])[None, None].repeat(4, 1).astype(np.int32)
positions = np.concatenate([np.arange(n) for n in (7, 13, 10, 3)])[None, None].repeat(4, 1).astype(np.int32)
rows = {"tokens": rng.integers(3, 512, shape).astype(np.int32), "segment_ids": segments, "positions": positions}

def run(mesh, impl):
    model = Decoder(get_preset("micro"), attention_impl=impl, compute_dtype=jnp.float32, remat=True)
    tx = optax.sgd(0.5)
    shardings = state_shardings(model, tx, mesh)
    state = init_state(model, tx, mesh, shardings, seed=0)
    step = make_train_step(model, tx, lambda s: 0.5, mesh, shardings)
    losses, norms = [], []
    for _ in range(2):
        state, metrics = step(state, device_batch(rows, mesh, batch_axis=1))
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return losses, norms, jax.device_get(state.params)

single = run(mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1]), "xla")
split = run(mesh_lib.make_mesh(1, -1, 1, context=4), "blockwise")  # data 1 x fsdp 2 x context 4
print(json.dumps({
    "mesh": dict(mesh_lib.make_mesh(1, -1, 1, context=4).shape),
    "single": single[:2], "split": split[:2],
    "max_param_diff": max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(single[2]),
                                                                     jax.tree.leaves(split[2]))),
}))
"""


@pytest.fixture(scope="module")
def comparison():
    return run_on_fake_devices(SCRIPT)


def test_context_parallel_train_steps_match_one_device(comparison):
    assert comparison["mesh"] == {"data": 1, "fsdp": 2, "context": 4, "tensor": 1}
    single_losses, single_norms = comparison["single"]
    split_losses, split_norms = comparison["split"]
    assert split_losses == pytest.approx(single_losses, rel=1e-5)
    assert split_norms == pytest.approx(single_norms, rel=1e-4)
    assert comparison["max_param_diff"] < 1e-5
