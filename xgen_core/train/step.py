"""Train state, its sharded initialisation, and the compiled train and eval steps.

A batch is a dict of int32 arrays (accumulation steps, micro-batch rows, seq_len + 1) with fields
tokens / segment_ids / positions. Gradients are summed over the micro-batches and divided once by the
number of target tokens in the whole batch, so every token weighs the same however the documents fall
into micro-batches (a mean of micro-batch means would over-weight sparse micro-batches).
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from xgen_core.tokens.packing import inputs_and_targets
from xgen_core.train import mesh as mesh_lib


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # updates applied so far
    params: dict
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data, so Orbax stores it like any array


def token_losses(model: nn.Module, params, rows: dict):
    """Summed cross-entropy over target tokens and the number of target tokens in `rows`."""
    batch = inputs_and_targets(rows)
    logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])


def state_shardings(model: nn.Module, tx: optax.GradientTransformation, mesh, example_rows: int = 1):
    """NamedShardings for every leaf of the TrainState, from the logical names on the parameters."""
    tokens = jnp.zeros((example_rows, 8), jnp.int32)
    boxed = jax.eval_shape(_initializing(model).init, jax.random.key(0), tokens, tokens, tokens)["params"]
    param_shardings = mesh_lib.logical_shardings(boxed, mesh)
    params_treedef = jax.tree.structure(nn.unbox(boxed))
    abstract_opt_state = jax.eval_shape(tx.init, nn.unbox(boxed))

    def is_params_like(subtree):
        return jax.tree.structure(subtree) == params_treedef

    # mu / nu mirror the parameters and are split the same way; counters are replicated.
    opt_shardings = jax.tree.map(
        lambda sub: param_shardings if is_params_like(sub) else mesh_lib.replicated(mesh),
        abstract_opt_state, is_leaf=is_params_like,
    )
    replicated = mesh_lib.replicated(mesh)
    return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated)


def _initializing(model: nn.Module) -> nn.Module:
    """The model to initialise parameters with: they do not depend on the attention kernel, and the 8-token
    example row is too short for the Pallas kernels (multiples of 128) and need not run on a TPU."""
    return model.clone(attention_impl="xla") if hasattr(model, "attention_impl") else model


def _init_fn(model: nn.Module, tx):
    def init(seed_array):
        rng = jax.random.PRNGKey(seed_array)
        init_rng, state_rng = jax.random.split(rng)
        tokens = jnp.zeros((1, 8), jnp.int32)
        params = nn.unbox(_initializing(model).init(init_rng, tokens, tokens, tokens))["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_rng)

    return init


def init_state(model: nn.Module, tx, mesh, shardings: TrainState, seed: int) -> TrainState:
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
        return jax.jit(_init_fn(model, tx), out_shardings=shardings)(jnp.asarray(seed, jnp.uint32))


def abstract_state(model: nn.Module, tx) -> TrainState:
    """Shapes and dtypes of the TrainState, allocating nothing (the target of a checkpoint restore)."""
    return jax.eval_shape(_init_fn(model, tx), jnp.zeros((), jnp.uint32))


def make_train_step(model: nn.Module, tx, schedule, mesh, shardings: TrainState):
    """jit-compiled (state, batch) -> (state, metrics) under the mesh and logical rules."""

    def train_step(state: TrainState, batch: dict):
        def accumulate(carry, rows):
            grad_sum, loss_sum, token_count = carry
            (loss, count), grads = jax.value_and_grad(
                lambda p: token_losses(model, p, rows), has_aux=True
            )(state.params)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (grad_sum, loss_sum + loss, token_count + count), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grad_sum, loss_sum, token_count), _ = jax.lax.scan(
            accumulate, (zeros, jnp.float32(0), jnp.float32(0)), batch
        )
        denominator = jnp.maximum(token_count, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grad_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
        )
        metrics = {
            "loss": loss_sum / denominator,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "target_tokens": token_count,
        }
        return new_state, metrics

    batch_sharding = mesh_lib.batch_sharding(mesh, ndim=3, batch_axis=1)
    compiled = jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, mesh_lib.replicated(mesh)),
        # The old state's buffers become the new state's. Safe with asynchronous checkpoints: while a save
        # still holds a host view of an array, PJRT does not donate that buffer (it allocates a new one),
        # which tests/train/test_step.py checks. On CPU donation also keeps the heap from fragmenting
        # (a fresh 1.2 GB state per ~100M-model step otherwise; see xgen_core/train/host.py).
        donate_argnums=0,
    )
    return _under_mesh(compiled, mesh)


def make_eval_step(model: nn.Module, mesh, shardings: TrainState):
    """jit-compiled (params, rows (batch, seq_len + 1)) -> (summed loss, target tokens)."""
    compiled = jax.jit(
        lambda params, rows: token_losses(model, params, rows),
        in_shardings=(shardings.params, mesh_lib.batch_sharding(mesh, ndim=2)),
        out_shardings=mesh_lib.replicated(mesh),
    )
    return _under_mesh(compiled, mesh)


def _under_mesh(fn, mesh):
    def call(*args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
            return fn(*args)

    call.lower = lambda *args: _lower_under_mesh(fn, mesh, *args)
    return call


def _lower_under_mesh(fn, mesh, *args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
        return fn.lower(*args)


def device_batch(rows: dict, mesh, batch_axis: int):
    """Host rows (this process's share of the global batch) -> global arrays split over the batch axes."""
    sharding = mesh_lib.batch_sharding(mesh, ndim=next(iter(rows.values())).ndim, batch_axis=batch_axis)
    return {
        name: jax.make_array_from_process_local_data(sharding, value)
        for name, value in rows.items()
    }


ROW_FIELDS = ("tokens", "segment_ids", "positions")  # xgen_core/tokens/packing.py: row_fields


def abstract_train_inputs(model: nn.Module, tx, mesh, shardings: TrainState, accum_steps: int, micro_rows: int,
                          row_len: int) -> tuple[TrainState, dict]:
    """(state, batch) of the train step as ShapeDtypeStructs carrying the trainer's NamedShardings: what an
    ahead-of-time compile lowers over, allocating nothing. The batch is laid out as the trainer feeds it
    (accumulation steps, micro-batch rows, seq_len + 1), split over the batch axes as `device_batch` splits it."""
    state = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state(model, tx), shardings,
    )
    rows = jax.ShapeDtypeStruct((accum_steps, micro_rows, row_len), jnp.int32,
                                sharding=mesh_lib.batch_sharding(mesh, ndim=3, batch_axis=1))
    return state, {field: rows for field in ROW_FIELDS}
