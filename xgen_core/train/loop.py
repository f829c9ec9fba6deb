"""The pretraining loop: curriculum data, aligned LR schedule, sharded steps, metrics, exact resume.

Everything that decides a loss (parameters, optimizer state, step, RNG, the data iterators' positions, the
spike alarm's average) is in the checkpoint, and the batch of a step depends only on that state, so a run
restarted from its latest checkpoint recomputes exactly the losses an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.config import MeshConfig, ModelConfig, TrainConfig, TrainRunConfig
from xgen_core.errors import XgenError
from xgen_core.localize import CACHE_DIR, upload_directory
from xgen_core.model.attention import resolve_impl
from xgen_core.model.decoder import Decoder
from xgen_core.model.info import training_flops_per_token
from xgen_core.storage import is_gcs, join, normalize_uri, store_for
from xgen_core.tokens.loader import CurriculumLoader, PackedRows, ShardSet, StageData
from xgen_core.tokens.packing import inputs_and_targets, row_fields
from xgen_core.tokens.shards import STAGES_FILE, UNIGRAM_FILE
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.checkpoint import Checkpointer
from xgen_core.train.host import configure_cpu_training
from xgen_core.train.metrics import (
    LossSpikeAlarm, MetricsWriter, device_peak_flops, plot_losses, read_metrics,
)
from xgen_core.train.optimizer import make_optimizer
from xgen_core.train.schedule import (
    StagePlan, curriculum_schedule, plan_stages, plot_schedule, tokens_before_step, warmup_decay_schedule,
)
from xgen_core.train.step import (
    abstract_state, device_batch, init_state, make_eval_step, make_train_step, state_shardings,
)


@dataclasses.dataclass(frozen=True)
class Continuation:
    """Training that goes on from another run's final parameters with a fresh optimizer (length extension).

    The run is one data stage under a warm-up + decay schedule, with the model's RoPE base and maximum length
    replaced; everything else (checkpoints, data iterator state, exact resume) is the pretraining loop's."""

    init_run_uri: str  # the previous stage's artifact: its latest checkpoint gives the parameters
    rope_theta: float
    max_seq_len: int
    warmup_steps: int
    eval_rows: int  # held-out rows of the stage's own packed data


def build_model(model_config: ModelConfig, tokenizer_vocab_size: int, platform: str | None = None,
                n_layers: int | None = None, **spec_overrides) -> Decoder:
    """The configured decoder for `platform` (default: this process's JAX backend; "tpu" for an ahead-of-time
    TPU compile on a CPU host), which picks the attention kernel. `n_layers` replaces the preset's depth (the
    compile check counts FLOPs on 1- and 2-layer copies of the step); `spec_overrides` replace other preset fields
    (a length extension's RoPE base and maximum length)."""
    overrides = {**spec_overrides, **({"n_layers": n_layers} if n_layers else {})}
    spec = dataclasses.replace(model_config.spec(), **overrides)
    if tokenizer_vocab_size > spec.vocab_size:
        raise XgenError(f"the tokenizer has {tokenizer_vocab_size} tokens, more than the {spec.vocab_size} "
                        f"embedding rows of model preset {spec.name}")
    return Decoder(
        spec,
        attention_impl=resolve_impl(model_config.attention_impl, platform),
        compute_dtype=jnp.dtype(model_config.compute_dtype),
        param_dtype=jnp.dtype(model_config.param_dtype),
        remat=model_config.remat,
        scan_layers=model_config.scan_layers,
    )


@dataclasses.dataclass(frozen=True)
class PretrainStep:
    """What the trainer and the ahead-of-time compile check (xgen_core/train/compile.py) share."""

    model: Decoder
    tx: object
    schedule: object
    mesh: jax.sharding.Mesh
    shardings: object  # TrainState of NamedShardings
    train_step: object  # jitted (state, batch) -> (state, metrics), state donated


def build_pretrain_step(model_config: ModelConfig, train: TrainConfig, mesh_config: MeshConfig, plans,
                        vocab_size: int, devices=None, n_layers: int | None = None,
                        continuation: Continuation | None = None, context_parallel: int = 1) -> PretrainStep:
    """Model, optimizer, mesh over `devices` (default: all local JAX devices), shardings and the train step: the
    curriculum schedule, or a continuation's own RoPE base and warm-up + decay schedule. `context_parallel`
    devices split each sequence (train_run.context_parallel), which runs the blockwise kernel."""
    devices = jax.devices() if devices is None else list(devices)
    platform = devices[0].platform
    model_config = _context_parallel_model(model_config, context_parallel)
    if continuation is None:
        model = build_model(model_config, vocab_size, platform=platform, n_layers=n_layers)
        schedule = curriculum_schedule(plans, train.peak_lr, train.slow_decay_end_ratio, train.final_lr_ratio)
    else:
        model = build_model(model_config, vocab_size, platform=platform, n_layers=n_layers,
                            rope_theta=continuation.rope_theta, max_seq_len=continuation.max_seq_len)
        schedule = warmup_decay_schedule(train.peak_lr, continuation.warmup_steps, plans[-1].end_step,
                                         train.final_lr_ratio)
    tx = make_optimizer(schedule, b1=train.b1, b2=train.b2, eps=train.eps,
                        weight_decay=train.weight_decay, grad_clip=train.grad_clip)
    mesh = mesh_lib.make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.tensor, devices=devices,
                              context=context_parallel)
    shardings = state_shardings(model, tx, mesh)
    return PretrainStep(model, tx, schedule, mesh, shardings, make_train_step(model, tx, schedule, mesh, shardings))


def _context_parallel_model(model_config: ModelConfig, context_parallel: int) -> ModelConfig:
    """Under context parallelism attention is the blockwise kernel under shard_map (xgen_core/model/
    context_parallel.py): `auto` means that kernel, and a named other kernel is refused rather than ignored."""
    if context_parallel == 1:
        return model_config
    if model_config.attention_impl not in ("auto", "blockwise"):
        raise XgenError(f"context parallelism over {context_parallel} devices runs the blockwise attention kernel; "
                        f"attention_impl {model_config.attention_impl!r} cannot split a sequence: set it to auto "
                        f"or blockwise, or train_run.context_parallel for this stage to 1")
    return model_config.model_copy(update={"attention_impl": "blockwise"})


def read_packed_stages(pack_uri: str) -> dict:
    uri = join(pack_uri, STAGES_FILE)
    if not store_for(uri).exists(uri):
        raise XgenError(f"no {STAGES_FILE} in {pack_uri}: run the pack stage first")
    return json.loads(store_for(uri).read_text(uri))


def shard_set(pack_uri: str, packed: dict, stage: dict, split: str) -> ShardSet:
    """The train or held-out shards of one packed stage, read straight from the pack artifact."""
    return ShardSet(join(pack_uri, stage[f"{split}_dir"]), tuple(stage[split]["shard_rows"]),
                    packed["bos_id"], packed["pad_id"])


def heldout_rows(pack_uri: str, packed: dict, count: int) -> dict[str, np.ndarray]:
    """The first `count` held-out rows, taken from the stages in turn: the same rows for the whole run."""
    # A small stage may hold no held-out cluster (the split hashes cluster ids): the others supply the rows.
    sources = [PackedRows(shard_set(pack_uri, packed, stage, "heldout"))
               for stage in packed["stages"] if stage["heldout"]["rows"]]
    rows, index = [], 0
    while len(rows) < count and any(index < len(s) for s in sources):
        rows.extend(s[index] for s in sources if index < len(s))
        index += 1
    rows = rows[:count]
    if len(rows) < count:
        raise XgenError(f"only {len(rows)} held-out rows in {pack_uri}, the evaluation needs {count}")
    return row_fields(np.stack(rows), packed["bos_id"], packed["pad_id"])


def unigram_baseline_loss(pack_uri: str, rows: dict[str, np.ndarray]) -> float:
    """Cross-entropy (nats/token) of the held-out targets under the training data's unigram distribution."""
    uri = join(pack_uri, UNIGRAM_FILE)
    counts = np.load(io.BytesIO(store_for(uri).read_bytes(uri))).astype(np.float64) + 1.0  # add-one: no zero
    log_probs = np.log(counts / counts.sum())
    batch = inputs_and_targets(rows)
    weights = batch["weights"]
    return float(-(log_probs[batch["targets"]] * weights).sum() / weights.sum())


class Evaluator:
    def __init__(self, model, mesh, shardings, rows: dict[str, np.ndarray], micro_batch: int):
        self.step = make_eval_step(model, mesh, shardings)
        self.mesh, self.micro_batch = mesh, micro_batch
        count = len(rows["tokens"])
        self.batches = [
            {field: value[start:start + micro_batch] for field, value in rows.items()}
            for start in range(0, count - count % micro_batch, micro_batch)
        ]

    def loss(self, params) -> float:
        total, tokens = 0.0, 0.0
        for rows in self.batches:
            loss_sum, count = jax.device_get(self.step(params, device_batch(rows, self.mesh, batch_axis=0)))
            total, tokens = total + float(loss_sum), tokens + float(count)
        return total / max(tokens, 1.0)


def pretrain(pack_uri: str, out_uri: str, model_config: ModelConfig, train: TrainConfig, runtime: TrainRunConfig,
             stage_tokens: dict[str, int], vocab_size: int, log=print, on_step=None,
             continuation: Continuation | None = None, context_parallel: int = 1) -> dict:
    """Train (or resume) up to the end of the curriculum, or to step `runtime.max_steps` if that comes first.

    `train` (the `train` section) decides the trained model; `runtime` (`train_run`: mesh, cadences, the
    spike alarm, peak FLOP/s) only how the run executes, so a run resumed with another mesh or cadence
    continues the same training. `stage_tokens` is the curriculum (stage name -> token budget, in order).

    Checkpoints go to `out_uri`/checkpoints (local or gs://); metrics.jsonl, TensorBoard events, the LR
    plot and summary.json are written locally and, for a gs:// run, uploaded at every checkpoint.
    `on_step(record)` is called after each step's metrics are written (progress reporting, fault drills).
    With `continuation` the run starts from another run's parameters instead (see Continuation);
    `context_parallel` devices split each sequence (see build_pretrain_step).
    """
    configure_cpu_training()  # a no-op when the stage runner did it before importing JAX
    mesh_lib.maybe_initialize_distributed(runtime.mesh.distributed)
    max_steps = runtime.max_steps
    out = local_run_directory(out_uri)
    pack_uri = normalize_uri(pack_uri)
    packed = read_packed_stages(pack_uri)
    seq_len = packed["seq_len"]
    plans = (_plans(packed, stage_tokens, train.batch_size) if continuation is None
             else _single_stage_plans(packed, stage_tokens, train.batch_size))
    checkpointer = Checkpointer(join(normalize_uri(out_uri), "checkpoints"), runtime.keep_checkpoints)
    last_step = min(plans[-1].end_step, max_steps) if max_steps else plans[-1].end_step
    if (checkpointer.latest_step() or 0) >= last_step and (out / "summary.json").exists():
        log(f"already trained to step {checkpointer.latest_step()}: nothing to do")
        checkpointer.close()
        return json.loads((out / "summary.json").read_text())
    micro_batch = train.batch_size // train.grad_accum_steps
    if train.batch_size % (train.grad_accum_steps * jax.process_count()):
        raise XgenError("train.batch_size must divide by grad_accum_steps x the number of hosts")

    setup = build_pretrain_step(model_config, train, runtime.mesh, plans, vocab_size, continuation=continuation,
                                context_parallel=context_parallel)
    model, tx, schedule, mesh, shardings, train_step = (
        setup.model, setup.tx, setup.schedule, setup.mesh, setup.shardings, setup.train_step)
    loader = CurriculumLoader(
        [StageData(p.name, shard_set(pack_uri, packed, _stage_entry(packed, p.name), "train"), p.start_step)
         for p in plans],
        batch_rows=train.batch_size // jax.process_count(), seed=train.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    alarm = LossSpikeAlarm(runtime.spike_factor, runtime.spike_warmup_steps)

    state, start_step = _initial_or_restored_state(checkpointer, model, tx, mesh, shardings, loader, alarm, train,
                                                   continuation)
    if start_step:
        log(f"resuming from the checkpoint of step {start_step}")

    eval_rows = runtime.eval_batches * micro_batch if continuation is None else continuation.eval_rows
    eval_rows = -(-eval_rows // micro_batch) * micro_batch  # whole micro-batches: fewer rows would evaluate none
    heldout = heldout_rows(pack_uri, packed, eval_rows)
    evaluator = Evaluator(model, mesh, shardings, heldout, micro_batch)
    baseline = unigram_baseline_loss(pack_uri, heldout)
    plot_schedule(schedule, plans, str(out / "lr_schedule.png"))
    flops_per_token = training_flops_per_token(model.spec, seq_len)
    peak_flops, peak_source = device_peak_flops(runtime.peak_flops_per_device)
    writer = MetricsWriter(out, resume_after_step=start_step)
    for stage in stage_epochs(plans, packed, train.batch_size, plans[-1].end_step):
        log(describe_epochs(stage, train.batch_size))
    log(f"pretraining {model.spec.name}: steps {start_step}->{last_step} of {plans[-1].end_step}, "
        f"{jax.device_count()} device(s), unigram baseline {baseline:.3f}")

    heldout_loss = None
    for step in range(start_step, last_step):
        stage, rows = loader.batch_for_step(step)
        rows = {k: v.reshape(train.grad_accum_steps, -1, *v.shape[1:]) for k, v in rows.items()}
        started = time.perf_counter()
        state, metrics = train_step(state, device_batch(rows, mesh, batch_axis=1))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        seconds = time.perf_counter() - started
        record = _step_record(step + 1, stage.name, plans, metrics, seconds, flops_per_token, peak_flops)
        record["loss_spike"] = alarm.update(metrics["loss"])
        if record["loss_spike"]:
            log(f"LOSS SPIKE at step {step + 1}: {metrics['loss']:.4f} (average {alarm.average:.4f})")
        if (step + 1) % runtime.eval_every == 0 or step + 1 == last_step:
            heldout_loss = record["heldout_loss"] = evaluator.loss(state.params)
            log(f"step {step + 1}/{last_step} ({stage.name}): loss {record['loss']:.3f}, held-out "
                f"{heldout_loss:.3f} (unigram {baseline:.3f}), lr {record['lr']:.2e}, "
                f"{record['tokens_per_s']:.0f} tok/s")
        writer.write(record)
        if on_step:
            on_step(record)
        if (step + 1) % runtime.checkpoint_every == 0 or step + 1 == last_step:
            checkpointer.save(step + 1, state, loader.get_state(),
                              {"alarm": alarm.get_state(), "process_count": jax.process_count()})
            writer.flush()
            sync_run_files(out, out_uri)
    checkpointer.close()
    writer.close()
    if heldout_loss is None:  # resumed from a checkpoint of the last step: nothing trained, still report
        heldout_loss = evaluator.loss(state.params)
    summary = {
        "last_step": last_step, "total_steps": plans[-1].end_step, "heldout_loss": heldout_loss,
        "unigram_baseline_loss": baseline, "flops_per_token": flops_per_token, "peak_flops_per_device": peak_flops,
        "peak_flops_source": peak_source, "stages": stage_epochs(plans, packed, train.batch_size, last_step),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_losses(read_metrics(out / "metrics.jsonl"), {p.name: p.start_step for p in plans}, str(out / "loss.png"))
    sync_run_files(out, out_uri)
    return summary


def local_run_directory(out_uri: str) -> Path:
    """Where metrics and plots are written: the run directory itself, or a local mirror of a gs:// one."""
    if not is_gcs(out_uri):
        path = Path(normalize_uri(out_uri))
        path.mkdir(parents=True, exist_ok=True)
        return path
    mirror = CACHE_DIR / "runs" / hashlib.sha256(out_uri.encode()).hexdigest()[:16]
    mirror.mkdir(parents=True, exist_ok=True)
    metrics_uri = join(out_uri, "metrics.jsonl")
    if store_for(out_uri).exists(metrics_uri):  # a resumed run appends to what the killed one uploaded
        (mirror / "metrics.jsonl").write_bytes(store_for(out_uri).read_bytes(metrics_uri))
    return mirror


def sync_run_files(local: Path, out_uri: str) -> None:
    if is_gcs(out_uri):
        upload_directory(local, out_uri)


def run(ctx) -> dict:
    """The `pretrain` stage: resumes in its artifact directory from the latest checkpoint."""
    from xgen_core.tokens.tokenizer import load_tokenizer

    cfg = ctx.cfg
    _, tokenizer_config = load_tokenizer(ctx.inputs["tokenizer"])
    summary = pretrain(
        ctx.inputs["pack"], ctx.output, cfg.model, cfg.train, cfg.train_run,
        cfg.curriculum(), vocab_size=tokenizer_config["vocab_size"], log=ctx.log,
    )
    return {
        "counts": {"steps": summary["last_step"], "curriculum_steps": summary["total_steps"]},
        "complete": summary["last_step"] >= summary["total_steps"],
        "metrics": {
            **{key: summary[key] for key in ("heldout_loss", "unigram_baseline_loss", "flops_per_token")},
            "epochs": {stage["name"]: stage["epochs_used"] for stage in summary["stages"]},
        },
    }


def _step_record(step: int, stage_name: str, plans, metrics: dict, seconds: float, flops_per_token: float,
                 peak_flops: float) -> dict:
    """One line of metrics.jsonl: the step's metrics plus tokens so far, throughput and MFU."""
    tokens_per_step = next(p.tokens_per_step for p in plans if p.name == stage_name)
    return {
        "step": step, "stage": stage_name, "tokens": tokens_before_step(plans, step), **metrics,
        "step_seconds": seconds, "tokens_per_s": tokens_per_step / seconds,
        "mfu": tokens_per_step * flops_per_token / seconds / (peak_flops * jax.device_count()),
    }


def _plans(packed: dict, stage_tokens: dict[str, int], batch_size: int):
    packed_names = [s["name"] for s in packed["stages"]]
    missing = [name for name in stage_tokens if name not in packed_names]
    if missing:
        raise XgenError(f"curriculum stages {missing} have no packed shards (packed: {packed_names})")
    budgets = [(name, int(tokens), packed["seq_len"]) for name, tokens in stage_tokens.items()]
    return plan_stages(budgets, batch_size)


def stage_epochs(plans, packed: dict, batch_size: int, last_step: int) -> list[dict]:
    """Per curriculum stage: its plan, what was packed, and how many passes over its training rows the run makes.

    The mixture sizes a stage by estimated tokens (characters / chars_per_token) while the schedule sizes it by
    the token budget, and the loader repeats a stage's rows endlessly: `epochs_used` > 1 means the run cycled the
    stage's data, < 1 that it cut it. Rows drawn over rows packed, all hosts together.
    """
    stages = []
    for plan in plans:
        entry = _stage_entry(packed, plan.name)["train"]
        steps_used = min(max(last_step - plan.start_step, 0), plan.steps)
        stages.append({
            **dataclasses.asdict(plan), "packed_rows": entry["rows"], "packed_tokens": entry["tokens"],
            "steps_used": steps_used,
            "epochs_planned": plan.steps * batch_size / entry["rows"],
            "epochs_used": steps_used * batch_size / entry["rows"],
        })
    return stages


def describe_epochs(stage: dict, batch_size: int) -> str:
    epochs = stage["epochs_planned"]
    verdict = (f"repeats its data {epochs:.2f} times" if epochs > 1
               else f"reads {epochs:.0%} of its data" if epochs < 1 else "reads its data once")
    return (f"{stage['name']}: {stage['steps']} steps x {batch_size} rows over {stage['packed_rows']} packed rows "
            f"({stage['packed_tokens']:,} tokens; budget {stage['tokens']:,}): the curriculum {verdict}")


def _single_stage_plans(packed: dict, stage_tokens: dict[str, int], batch_size: int) -> list[StagePlan]:
    (name, tokens), = stage_tokens.items()
    if name not in [stage["name"] for stage in packed["stages"]]:
        raise XgenError(f"stage {name} has no packed shards in {[stage['name'] for stage in packed['stages']]}")
    tokens_per_step = batch_size * packed["seq_len"]
    return [StagePlan(name, int(tokens), packed["seq_len"], 0, max(1, -(-int(tokens) // tokens_per_step)),
                      tokens_per_step)]


def continued_state(init_run_uri: str, model, tx, mesh, shardings):
    """Step 0 with the parameters and RNG of `init_run_uri`'s latest checkpoint and a fresh optimizer state.

    Parameter shapes do not depend on the RoPE base or the maximum length, so the new model's state describes
    the old checkpoint; only the parameters and RNG are kept."""
    source = Checkpointer(join(normalize_uri(init_run_uri), "checkpoints"), keep=1_000_000)
    latest = source.latest_step()
    if latest is None:
        raise XgenError(f"no checkpoint in {init_run_uri}: train the previous stage first")
    restored, _, _ = source.restore(latest, abstract_state(model, tx), shardings)
    source.close()

    def fresh(state):
        return state.replace(step=jnp.zeros((), jnp.int32), opt_state=tx.init(state.params))

    with jax.set_mesh(mesh):
        return jax.jit(fresh, out_shardings=shardings)(restored)


def _stage_entry(packed: dict, name: str) -> dict:
    return next(s for s in packed["stages"] if s["name"] == name)


def _initial_or_restored_state(checkpointer, model, tx, mesh, shardings, loader, alarm, train, continuation=None):
    latest = checkpointer.latest_step()
    if latest is None and continuation is not None:
        return continued_state(continuation.init_run_uri, model, tx, mesh, shardings), 0
    if latest is None:
        return init_state(model, tx, mesh, shardings, train.seed), 0
    state_like = abstract_state(model, tx)
    state, data_state, meta = checkpointer.restore(latest, state_like, shardings)
    hosts = meta.get("process_count", 1)
    if hosts != jax.process_count() and data_state:  # an imported checkpoint has no data position yet
        # Each host reads its own shards, so the data position is per host: the mesh may change, the host count not.
        raise XgenError(f"the checkpoint of step {latest} was written by {hosts} host(s), this run has "
                        f"{jax.process_count()}: resume on as many hosts (the mesh shape and cadences may change)")
    loader.set_state(data_state)
    alarm.set_state(meta["alarm"])
    return state, latest


def pretrain_compile_target(cfg, devices, n_layers: int | None = None):
    """The pretrain step as the trainer builds it, over abstract inputs, for `xgen train compile`."""
    from xgen_core.train.schedule import schedule_for

    plans, _ = schedule_for(cfg.curriculum(), cfg.pack.seq_len, cfg.train)
    return train_step_compile_target(cfg, devices, n_layers, cfg.model, cfg.train, plans, cfg.pack.seq_len,
                                     context_parallel=cfg.train_run.context_parallel.get("pretrain", 1))


def train_step_compile_target(cfg, devices, n_layers, model_config: ModelConfig, train: TrainConfig, plans,
                              seq_len: int, continuation: Continuation | None = None, context_parallel: int = 1,
                              section: str = "train", context_key: str = "train_run.context_parallel.pretrain"):
    """A step of the pretraining loop (pretrain, or a length extension's continuation) built by
    build_pretrain_step over abstract inputs: what the trainer compiles, allocating nothing."""
    from xgen_core.train.compile import CompileTarget
    from xgen_core.train.step import abstract_train_inputs

    setup = build_pretrain_step(model_config, train, cfg.train_run.mesh, plans, cfg.tokenizer.vocab_size,
                                devices=devices, n_layers=n_layers, continuation=continuation,
                                context_parallel=context_parallel)
    mesh_axes = dict(setup.mesh.shape)
    batch_devices = mesh_axes["data"] * mesh_axes["fsdp"]
    micro_rows, remainder = divmod(train.batch_size, train.grad_accum_steps)
    if remainder or micro_rows % batch_devices:
        raise XgenError(f"{section}.batch_size {train.batch_size} / grad_accum_steps {train.grad_accum_steps} must give "
                        f"micro-batches that split evenly over data x fsdp = {batch_devices} devices (with "
                        f"{context_key} = {context_parallel} devices per sequence)")
    state, batch = abstract_train_inputs(setup.model, setup.tx, setup.mesh, setup.shardings,
                                         train.grad_accum_steps, micro_rows, seq_len + 1)
    spec = setup.model.spec
    tokens = train.batch_size * seq_len
    rows_per_device = micro_rows // batch_devices
    hints = (
        f"{section}.grad_accum_steps (now {train.grad_accum_steps}, {rows_per_device} row(s) of {seq_len} tokens per "
        f"data x fsdp device per micro-batch): more micro-batches hold fewer activations at once; "
        f"{section}.batch_size (now {train.batch_size}) changes the trained model",
        f"model.remat (now {str(model_config.remat).lower()}): true keeps one activation per layer and recomputes "
        f"the rest in the backward pass",
        f"{context_key} (now {context_parallel}): devices that split each sequence (each holds 1/{context_parallel} "
        f"of a row's activations)",
        f"train_run.mesh.fsdp / train_run.mesh.tensor (now data {mesh_axes['data']}, fsdp {mesh_axes['fsdp']}, "
        f"tensor {mesh_axes['tensor']}): parameters and optimizer state split over fsdp x context x tensor "
        f"devices; data replicates them",
        "a slice with more chips (--topology)",
    )
    return CompileTarget(
        step=setup.train_step, args=(state, batch), arg_names=("state", "batch"), tokens_per_step=tokens,
        model_flops_per_step=training_flops_per_token(spec, seq_len) * tokens, n_layers=spec.n_layers,
        scan_layers=model_config.scan_layers, loop_trips=train.grad_accum_steps, mesh_axes=mesh_axes,
        attention_impl=setup.model.attention_impl, shrink_hints=hints,
        activations=_pretrain_activations(spec, model_config, rows_per_device, seq_len // context_parallel,
                                          mesh_axes["tensor"]),
    )


def _pretrain_activations(spec, model_config: ModelConfig, rows: int, seq_len: int, tensor: int):
    """The largest activations one device holds during a micro-batch, from their shapes."""
    compute_bytes = jnp.dtype(model_config.compute_dtype).itemsize
    tokens = rows * seq_len
    sizes = [
        (f"logits ({rows}, {seq_len}, {spec.vocab_size}) float32 and their gradient", 2 * tokens * spec.vocab_size * 4
         // tensor),
        (f"layer inputs kept for the backward pass: {spec.n_layers} x ({rows}, {seq_len}, {spec.d_model})",
         spec.n_layers * tokens * spec.d_model * compute_bytes),
    ]
    if not model_config.remat:
        sizes.append((f"MLP activations kept for the backward pass (model.remat false): {spec.n_layers} x 3 x "
                      f"({rows}, {seq_len}, {spec.mlp_dim})",
                      spec.n_layers * 3 * tokens * spec.mlp_dim * compute_bytes // tensor))
    return tuple(sizes)
