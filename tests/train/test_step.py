import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.step import device_batch, init_state, make_train_step, state_shardings, token_losses

SEQ = 16


def rows_with_unequal_targets():
    """Two rows: a full document (16 targets) and a 4-token document followed by padding (3 targets)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 512, (2, SEQ + 1)).astype(np.int32)
    segments = np.ones((2, SEQ + 1), np.int32)
    segments[1, 4:] = 0
    tokens[1, 4:] = 0
    positions = np.where(segments > 0, np.arange(SEQ + 1), 0).astype(np.int32)
    return {"tokens": tokens, "segment_ids": segments, "positions": positions}


def one_step(rows, accum):
    model = Decoder(get_preset("micro"), attention_impl="xla", compute_dtype=jnp.float32)
    tx = optax.sgd(1.0)  # params move by exactly -grads
    mesh = mesh_lib.make_mesh(1, -1, 1)
    shardings = state_shardings(model, tx, mesh)
    state = init_state(model, tx, mesh, shardings, seed=0)
    before = jax.device_get(state.params)
    step = make_train_step(model, tx, lambda s: 1.0, mesh, shardings)
    shaped = {k: v.reshape(accum, -1, SEQ + 1) for k, v in rows.items()}
    new_state, metrics = step(state, device_batch(shaped, mesh, batch_axis=1))
    grads = jax.tree.map(lambda old, new: old - new, before, jax.device_get(new_state.params))
    return model, before, grads, jax.device_get(metrics)


def test_accumulated_gradient_is_normalised_by_all_target_tokens():
    rows = rows_with_unequal_targets()
    _, _, whole_grads, whole = one_step(rows, accum=1)
    model, params, accumulated_grads, accumulated = one_step(rows, accum=2)
    assert whole["target_tokens"] == accumulated["target_tokens"] == 19
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(accumulated_grads), jax.tree.leaves(whole_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
    # A mean of the two micro-batch means weighs the 3-token row like the 16-token one: a different loss.
    per_row = [token_losses(model, params, {k: v[i:i + 1] for k, v in rows.items()}) for i in range(2)]
    mean_of_means = np.mean([float(total / count) for total, count in per_row])
    assert abs(mean_of_means - accumulated["loss"]) > 1e-3


def micro_training(compute_dtype, lr: float):
    """(model, tx, shardings, first state, compiled step, one batch) for the micro preset on one device."""
    rows = rows_with_unequal_targets()
    model = Decoder(get_preset("micro"), attention_impl="xla", compute_dtype=compute_dtype)
    tx = optax.adamw(lr)
    mesh = mesh_lib.make_mesh(1, -1, 1)
    shardings = state_shardings(model, tx, mesh)
    state = init_state(model, tx, mesh, shardings, seed=0)
    step = make_train_step(model, tx, lambda s: lr, mesh, shardings)
    batch = device_batch({k: v[None] for k, v in rows.items()}, mesh, batch_axis=1)
    return model, tx, shardings, state, step, batch


def test_a_few_steps_reduce_the_loss():
    _, _, _, state, step, batch = micro_training(jnp.bfloat16, 3e-3)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.5
    assert int(state.step) == 8


def test_an_asynchronous_checkpoint_survives_the_donating_steps_after_it(tmp_path):
    """The step donates the old state; a save still in flight must write the state it was given."""
    from xgen_core.train.checkpoint import Checkpointer
    from xgen_core.train.step import abstract_state

    model, tx, shardings, state, step, batch = micro_training(jnp.float32, 1e-2)
    state, _ = step(state, batch)
    saved = jax.tree.map(np.array, jax.device_get(state.params))  # copies, taken before the save
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), keep=2, asynchronous=True)
    checkpointer.save(1, state, {}, {})
    for _ in range(3):
        state, _ = step(state, batch)
    checkpointer.manager.wait_until_finished()
    restored, _, _ = checkpointer.restore(1, abstract_state(model, tx), shardings)
    checkpointer.close()
    for got, expected in zip(jax.tree.leaves(jax.device_get(restored.params)), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(got, expected)
    assert int(restored.step) == 1 and int(state.step) == 4
