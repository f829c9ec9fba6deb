"""What SFT, DPO and GRPO share: the init model from an earlier stage's artifact, the train state on the mesh,
an LR schedule, a jit-compiled step over any objective, and a loop with checkpoints, metrics and exact resume.

The train state is the pretraining TrainState (params, AdamW state, step, RNG) with the same optimizer chain, so
every post-training artifact loads the way a pretrain artifact does (xgen_core/infer/model_artifact.py) and a
killed stage resumes from its latest Orbax checkpoint. The batch of a step is a function of the step alone (and,
for GRPO, of the parameters the checkpoint holds), so a resumed run recomputes the losses an uninterrupted run
would have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xgen_core.config import MeshConfig, TrainConfig, PosttrainRunConfig
from xgen_core.errors import XgenError
from xgen_core.storage import join, normalize_uri
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.checkpoint import Checkpointer
from xgen_core.train.loop import local_run_directory, sync_run_files
from xgen_core.train.metrics import MetricsWriter
from xgen_core.train.optimizer import make_optimizer
from xgen_core.train.step import TrainState, _under_mesh, abstract_state, state_shardings


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int, final_ratio: float):
    """Linear warm-up to the peak, then cosine decay to `final_ratio` x peak at `total_steps`."""
    final = peak_lr * final_ratio

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * (step + 1) / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        decayed = final + (peak_lr - final) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, decayed)

    return schedule


def optimizer(train: TrainConfig, schedule, weight_decay: float):
    """Pretraining's AdamW chain (betas, eps, clipping from `train`): same state structure, so same checkpoints."""
    return make_optimizer(schedule, b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=weight_decay,
                          grad_clip=train.grad_clip)


@dataclass
class Policy:
    """The model being post-trained: decoder, tokenizer and the init artifact it came from."""

    model: nn.Module
    init_params: dict
    tokenizer: object
    tokenizer_config: dict
    init_uri: str
    init_step: int


def load_policy(init_uri: str, expected_model: dict | None = None) -> Policy:
    from xgen_core import artifacts
    from xgen_core.infer.model_artifact import load_trained_model

    trained = load_trained_model(init_uri)
    if expected_model is not None:
        init_model = artifacts.read_manifest(trained.uri)["config"]["model"]
        if init_model != expected_model:
            raise XgenError(f"--init {trained.uri} was trained with model {init_model}, the config says "
                            f"{expected_model}: post-training keeps the architecture; set model.* to match")
    return Policy(trained.model, trained.params, trained.tokenizer, trained.tokenizer_config, trained.uri,
                  trained.step)


class Trainer:
    """Train state, checkpoints and metrics of one post-training stage, in its artifact directory."""

    def __init__(self, policy: Policy, tx, schedule, mesh_config: MeshConfig, run: PosttrainRunConfig,
                 out_uri: str, seed: int, log=print):
        mesh_lib.maybe_initialize_distributed(mesh_config.distributed)
        self.policy, self.tx, self.schedule, self.run, self.log = policy, tx, schedule, run, log
        self.out_uri = normalize_uri(out_uri)
        self.out: Path = local_run_directory(out_uri)
        self.mesh = mesh_lib.make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor)
        self.shardings = state_shardings(policy.model, tx, self.mesh)
        self.checkpointer = Checkpointer(join(self.out_uri, "checkpoints"), run.keep_checkpoints)
        self.state, self.start_step = self._initial_or_restored(seed)
        self.writer: MetricsWriter | None = None

    def _initial_or_restored(self, seed: int):
        latest = self.checkpointer.latest_step()
        if latest is None:
            params = jax.device_put(self.policy.init_params, self.shardings.params)

            def init(params):
                return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params),
                                  rng=jax.random.PRNGKey(seed))

            with jax.set_mesh(self.mesh), nn.logical_axis_rules(mesh_lib.LOGICAL_RULES):
                return jax.jit(init, out_shardings=self.shardings)(params), 0
        state, _, _ = self.checkpointer.restore(latest, abstract_state(self.policy.model, self.tx), self.shardings)
        self.log(f"resuming from the checkpoint of step {latest}")
        return state, latest

    def compile_step(self, loss_fn: Callable, example_batch: dict):
        """jit (state, batch) -> (state, metrics) for `loss_fn(params, batch) -> (loss, metrics dict)`."""
        return make_step(loss_fn, self.tx, self.schedule, self.mesh, self.shardings,
                         self.batch_shardings(example_batch))

    def compile_eval(self, fn: Callable, example_batch: dict):
        """jit (params, batch) -> replicated outputs."""
        compiled = jax.jit(fn, in_shardings=(self.shardings.params, self.batch_shardings(example_batch)),
                           out_shardings=mesh_lib.replicated(self.mesh))
        return _under_mesh(compiled, self.mesh)

    def batch_shardings(self, batch: dict):
        return {name: mesh_lib.batch_sharding(self.mesh, np.ndim(value)) for name, value in batch.items()}

    def train(self, last_step: int, do_step: Callable, evaluate: Callable, on_step=None) -> list[dict]:
        """Steps start_step..last_step: `do_step(state, step) -> (state, record)`, `evaluate(params) -> dict`
        every eval_every steps, at the last step and, on a fresh run, once before the first step (step 0)."""
        run = self.run
        # A fresh run (or one killed before its first checkpoint) rewrites the file from its step-0 evaluation.
        self.writer = MetricsWriter(self.out, resume_after_step=self.start_step if self.start_step else -1)
        if self.start_step == 0:
            self.writer.write({"step": 0, **evaluate(self.state.params)})
        for step in range(self.start_step, last_step):
            self.state, record = do_step(self.state, step)
            record = {"step": step + 1, **{k: _plain(v) for k, v in record.items()}}
            if (step + 1) % run.eval_every == 0 or step + 1 == last_step:
                record.update(evaluate(self.state.params))
            self.writer.write(record)
            self.log(_describe(record))
            if on_step:
                on_step(record)
            if (step + 1) % run.checkpoint_every == 0 or step + 1 == last_step:
                self.checkpointer.save(step + 1, self.state, {"step": step + 1}, {"process_count": jax.process_count()})
                self.writer.flush()
                sync_run_files(self.out, self.out_uri)
        return self.finish()

    def finish(self) -> list[dict]:
        from xgen_core.train.metrics import read_metrics

        self.checkpointer.close()
        if self.writer:
            self.writer.close()
        sync_run_files(self.out, self.out_uri)
        path = self.out / "metrics.jsonl"
        return read_metrics(path) if path.exists() else []

    def write_json(self, name: str, value) -> None:
        (self.out / name).write_text(json.dumps(value, indent=2, sort_keys=True, default=_plain))


def make_step(loss_fn: Callable, tx, schedule, mesh, shardings: TrainState, batch_shardings: dict):
    """The post-training step (what Trainer.compile_step and `xgen train compile` build): state donated."""

    def step(state: TrainState, batch: dict):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step), **aux}

    compiled = jax.jit(step, in_shardings=(shardings, batch_shardings),
                       out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    return _under_mesh(compiled, mesh)


def posttrain_model(cfg, devices, n_layers):
    """The model a post-training stage starts from, for `xgen train compile`: the config's architecture with the
    last length extension's RoPE base and maximum length (as the stage table chains them), for the devices'
    platform (which picks the attention kernel)."""
    from xgen_core.train.loop import build_model

    longest = cfg.extend_128k
    return build_model(cfg.model, cfg.tokenizer.vocab_size, platform=devices[0].platform, n_layers=n_layers,
                       rope_theta=longest.rope_theta, max_seq_len=longest.max_seq_len)


def compile_target(cfg, devices, n_layers, section: str, make_loss: Callable, batch_fields: dict,
                   tokens_per_step: int, weight_decay: float, float_fields: tuple[str, ...] = ()):
    """A post-training stage's step for `xgen train compile`: the model of the stage it starts from
    (`posttrain_model`), pretraining's optimizer chain, the training mesh, and `batch_fields` (name -> shape; int32,
    float32 for `float_fields`) split over the batch axes; `make_loss(model)` is the stage's own loss."""
    from xgen_core.model.info import training_flops_per_token
    from xgen_core.train.compile import CompileTarget

    model = posttrain_model(cfg, devices, n_layers)
    schedule = warmup_cosine(1e-6, 1, 2, 0.1)  # values do not change the program
    tx = optimizer(cfg.train, schedule, weight_decay)
    mesh_config = cfg.train_run.mesh
    mesh = mesh_lib.make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, devices=devices)
    shardings = state_shardings(model, tx, mesh)
    batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
    rows = next(iter(batch_fields.values()))[0]
    if rows % batch_devices:
        raise XgenError(f"{section}: {rows} rows per step do not split over data x fsdp = {batch_devices} devices")
    batch = {name: jax.ShapeDtypeStruct(shape, jnp.float32 if name in float_fields else jnp.int32,
                                        sharding=mesh_lib.batch_sharding(mesh, len(shape)))
             for name, shape in batch_fields.items()}
    state = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                         abstract_state(model, tx), shardings)
    seq_len = next(iter(batch_fields.values()))[1] - 1
    hints = (f"{section}.batch_size: {rows} rows of {seq_len + 1} tokens per step, {rows // batch_devices} per "
             f"data x fsdp device",
             f"model.remat (now {str(cfg.model.remat).lower()}): true keeps one activation per layer",
             "train_run.mesh.fsdp / train_run.mesh.tensor: parameters and optimizer state split over fsdp x tensor",
             "a slice with more chips (--topology)")
    return CompileTarget(
        step=make_step(make_loss(model), tx, schedule, mesh, shardings, {k: v.sharding for k, v in batch.items()}),
        args=(state, batch), arg_names=("state", "batch"), tokens_per_step=tokens_per_step,
        model_flops_per_step=training_flops_per_token(model.spec, seq_len) * tokens_per_step,
        n_layers=model.spec.n_layers, scan_layers=cfg.model.scan_layers, loop_trips=1, mesh_axes=dict(mesh.shape),
        attention_impl=model.attention_impl, shrink_hints=hints)


def last_step_of(total_steps: int, run: PosttrainRunConfig) -> int:
    return min(total_steps, run.max_steps) if run.max_steps else total_steps


def _plain(value):
    if isinstance(value, (np.generic, jax.Array, np.ndarray)):
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def _describe(record: dict) -> str:
    shown = [f"{k} {v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float)]
    return f"step {record['step']}: " + ", ".join(shown[:8])
