"""The same train steps on 8 fake CPU devices (data x fsdp x tensor = 2 x 2 x 2) match one device."""

import pytest

from tests.fake_devices import run_on_fake_devices

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, optax
from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.optimizer import make_optimizer
from xgen_core.train.step import device_batch, init_state, make_train_step, state_shardings

assert jax.device_count() == 8
rng = np.random.default_rng(0)
shape = (2, 8, 33)  # 2 accumulation steps x 8 rows x (32 + 1) tokens
segments = np.repeat(np.arange(1, 4), 11)[None, None].repeat(2, 0).repeat(8, 1).astype(np.int32)
positions = np.tile(np.arange(11), 3)[None, None].repeat(2, 0).repeat(8, 1).astype(np.int32)
rows = {"tokens": rng.integers(3, 512, shape).astype(np.int32), "segment_ids": segments, "positions": positions}

def run(mesh, adamw):
    model = Decoder(get_preset("micro"), attention_impl="xla", compute_dtype=jnp.float32)
    tx = (make_optimizer(lambda s: 1e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
          if adamw else optax.sgd(0.5))
    shardings = state_shardings(model, tx, mesh)
    state = init_state(model, tx, mesh, shardings, seed=0)
    step = make_train_step(model, tx, lambda s: 1e-2, mesh, shardings)
    losses, grad_norms = [], []
    for _ in range(3):
        state, metrics = step(state, device_batch(rows, mesh, batch_axis=1))
        losses.append(float(metrics["loss"]))
        grad_norms.append(float(metrics["grad_norm"]))
    specs = {"/".join(str(k.key) for k in path): str(leaf.sharding.spec)
             for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    moments = str(jax.tree.leaves(state.opt_state[1][0].mu)[0].sharding.spec) if adamw else None
    return {"losses": losses, "grad_norms": grad_norms, "params": jax.device_get(state.params),
            "specs": specs, "mu_spec": moments}

one_device = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
eight_devices = mesh_lib.make_mesh(2, 2, 2)
result = {}
for optimizer in ("adamw", "sgd"):
    single, sharded = run(one_device, optimizer == "adamw"), run(eight_devices, optimizer == "adamw")
    result[optimizer] = {
        "single_losses": single["losses"], "sharded_losses": sharded["losses"],
        "single_grad_norms": single["grad_norms"], "sharded_grad_norms": sharded["grad_norms"],
        "max_param_diff": max(float(np.abs(a - b).max())
                              for a, b in zip(jax.tree.leaves(single["params"]), jax.tree.leaves(sharded["params"]))),
        "sharded_specs": sharded["specs"], "mu_spec": sharded["mu_spec"],
    }
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def comparison():
    return run_on_fake_devices(SCRIPT)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_sharded_losses_and_gradients_match_single_device(comparison, optimizer):
    result = comparison[optimizer]
    assert result["sharded_losses"] == pytest.approx(result["single_losses"], rel=1e-5)
    assert result["sharded_grad_norms"] == pytest.approx(result["single_grad_norms"], rel=1e-4)


def test_sharded_parameters_match_single_device_under_sgd(comparison):
    # Under SGD parameters move by the gradient itself; Adam divides by sqrt(v) and so magnifies the
    # summation-order noise of near-zero gradients, which is why parameters are compared under SGD.
    assert comparison["sgd"]["max_param_diff"] < 1e-5


def test_parameters_and_moments_are_split_over_fsdp_and_tensor(comparison):
    result = comparison["adamw"]
    specs, comparison = result["sharded_specs"], result
    assert specs["layers/mlp/gate"] == "P(None, ('fsdp', 'context'), 'tensor')"
    assert specs["layers/attention/k"] == "P(None, ('fsdp', 'context'), 'tensor', None)"
    assert specs["embedding"] == "P('tensor', ('fsdp', 'context'))"
    assert "fsdp" in comparison["mu_spec"] or "tensor" in comparison["mu_spec"]
