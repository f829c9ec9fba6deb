"""Ahead-of-time compile of a training stage's step for a TPU slice that is not here (MaxText's train_compile).

libtpu (the `tpu` extra) describes a slice from its name alone (`v5p:8x8x16`: 1,024 v5p chips) and compiles
for it on this CPU: the stage's real step, built by the same function its trainer calls (mesh axes sized to
the slice, the trainer's shardings and donation, the configured kernels), lowered over ShapeDtypeStructs,
so nothing is allocated. XLA then reports the memory each chip needs and the FLOPs it runs, and a step that
cannot fit fails here in minutes rather than on a booked slice.

A stage plugs in with one entry in STEP_BUILDERS: "module:function" taking (cfg, devices, n_layers) and
returning a CompileTarget. `n_layers` (None = the preset's depth) lets the FLOPs count compile 1- and
2-layer copies of the step (see `compiled_flops_per_step`).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import time
from typing import Callable

from xgen_core.errors import XgenError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int  # per chip
    peak_bf16_flops: float  # dense bf16 FLOP/s per chip (data sheet)


# By the generation prefix of a topology name (libtpu's device_kind reads "TPU v5" for a v5p, so not that).
CHIPS = {
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12),
}

# Stage name -> "module:function" building its CompileTarget; imported only when that stage is compiled.
STEP_BUILDERS: dict[str, str] = {
    "pretrain": "xgen_core.train.loop:pretrain_compile_target",
    "extend_32k": "xgen_core.train.extend:compile_target_32k",
    "extend_128k": "xgen_core.train.extend:compile_target_128k",
    "sft": "xgen_core.posttrain.sft:compile_target",
    "dpo": "xgen_core.posttrain.dpo:compile_target",
    "grpo": "xgen_core.posttrain.grpo:compile_target",
}


@dataclasses.dataclass(frozen=True)
class CompileTarget:
    """A stage's step ready to lower, and what the report compares it with."""

    step: Callable  # jitted; step.lower(*args) lowers it under its mesh
    args: tuple  # pytrees of ShapeDtypeStructs with NamedShardings
    arg_names: tuple[str, ...]  # one name per element of args (state, batch, ...)
    tokens_per_step: int
    model_flops_per_step: float  # the model's own count (xgen_core/model/info.py) for the whole step
    n_layers: int  # the preset's depth
    scan_layers: bool  # layers under one compiled loop body
    loop_trips: int  # times the step runs its body around the layers (gradient accumulation micro-batches)
    mesh_axes: dict[str, int]
    attention_impl: str
    # Config keys that shrink per-chip memory, each with the reason and the value in force.
    shrink_hints: tuple[str, ...] = ()
    # The largest activations by name and per-device bytes, from their shapes (XLA names no temporaries).
    activations: tuple[tuple[str, int], ...] = ()
    # Further programs the stage runs every step (GRPO's sampler prefill and decode), each (name, CompileTarget);
    # compiled beside the step, and the stage fits only if each of them does.
    programs: tuple = ()
    # Bytes per device that stay on the chip while this program runs but are none of its arguments (the optimizer
    # state while the sampler runs on the parameters).
    resident_bytes: int = 0


def chip_for(topology: str) -> Chip:
    generation = topology.split(":", 1)[0]
    if generation not in CHIPS or ":" not in topology:
        raise XgenError(f"topology {topology!r}: expected <generation>:<shape> with generation one of "
                        f"{', '.join(CHIPS)}, e.g. v5p:8x8x16, v6e:16x16, v5e:16x16")
    return CHIPS[generation]


def tpu_devices(topology: str) -> list:
    """The abstract TPU devices of a slice named like v5p:8x8x16, from libtpu, with no TPU attached."""
    chip_for(topology)
    # libtpu otherwise looks for the slice's other hosts and logs an error about TPU_WORKER_HOSTNAMES, and
    # refuses to load while another process (any JAX process probing for a TPU) holds /tmp/libtpu_lockfile.
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        description = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as exc:  # libtpu missing, or a shape it does not know
        raise XgenError(f"cannot describe TPU topology {topology!r}: {type(exc).__name__}: "
                        f"{_first_line(exc)} (is the `tpu` extra installed? uv sync --extra tpu)") from None
    return list(description.devices)


def step_builder(stage: str) -> Callable:
    from xgen_core.stages import STAGES

    if stage not in {s.name for s in STAGES}:
        raise XgenError(f"unknown stage {stage!r}")
    if stage not in STEP_BUILDERS:
        raise XgenError(f"stage {stage!r} has no compile check yet; stages with one: {', '.join(STEP_BUILDERS)}")
    module, function = STEP_BUILDERS[stage].split(":")
    return getattr(importlib.import_module(module), function)


@dataclasses.dataclass
class Compiled:
    memory: dict | None  # per-device bytes; None when the compiler refused for lack of memory
    flops_per_device: float | None
    out_of_memory: str | None  # the compiler's own account of the largest allocations
    seconds: float


def compile_target(target: CompileTarget) -> Compiled:
    started = time.perf_counter()
    lowered = target.step.lower(*target.args)
    try:
        compiled = lowered.compile()
    except Exception as exc:
        if not _is_out_of_memory(exc):
            raise
        return Compiled(_memory_from_refusal(target, str(exc)), None, str(exc), time.perf_counter() - started)
    stats = compiled.memory_analysis()
    memory = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,  # donated arguments reused as outputs, counted once in total
        "temporaries": stats.temp_size_in_bytes,
        "generated_code": stats.generated_code_size_in_bytes,
    }
    memory["total"] = (memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temporaries"]
                       + memory["generated_code"])
    return Compiled(memory, float(_cost(compiled).get("flops", 0.0)), None, time.perf_counter() - started)


def _memory_from_refusal(target: CompileTarget, message: str) -> dict:
    """What is known when the TPU compiler refuses a program too big for HBM: the arguments (from their
    shardings) and the temporaries it says it needed; the total is at least their sum."""
    import jax

    arguments = sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
                    for leaf in jax.tree.leaves(target.args))
    needed = re.search(r"HLO temporaries \(([\d.]+)([KMGT]?)i?B?\)", message)
    temporaries = int(float(needed.group(1)) * 1024 ** " KMGT".index(needed.group(2) or " ")) if needed else None
    return {"arguments": arguments, "outputs": None, "aliased": None, "temporaries": temporaries,
            "generated_code": None, "total": arguments + (temporaries or 0)}


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def _is_out_of_memory(exc: Exception) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text.lower()


def compiled_flops_per_step(builder: Callable, cfg, devices: list, target: CompileTarget,
                            compiled: Compiled) -> tuple[float | None, str]:
    """FLOPs of one whole step over all devices, as XLA counts them for the TPU (recomputation included).

    XLA's cost analysis reports one device's program, counts a loop body once whatever its trip count, and
    sees nothing inside a Pallas kernel (an opaque custom call). So the count runs on copies of the step with
    XLA attention (same mesh, shardings, batch, remat), x devices, x the accumulation micro-batches (the
    optimizer update outside that loop is counted as often: a few FLOPs per parameter against thousands per
    token), and with scanned layers the layer body is measured on 1- and 2-layer copies with the layers
    unrolled: f(1) + (L - 1) x (f(2) - f(1)).
    """
    trips, count = target.loop_trips, len(devices)
    if target.mesh_axes.get("context", 1) > 1:
        # The copies would need XLA attention, which cannot split a sequence, and the blockwise kernel's block
        # loops are counted once by XLA whatever their trip counts.
        return None, "not counted: context parallelism (blockwise attention in loops XLA counts once)"
    if not target.scan_layers and target.attention_impl == "xla":
        return compiled.flops_per_device * trips * count, "the compiled step"
    model = cfg.model.model_copy(update={"scan_layers": False, "attention_impl": "xla"})
    counting = cfg.model_copy(update={"model": model})
    if not target.scan_layers:
        copy = compile_target(builder(counting, devices, None)).flops_per_device
        if copy is None:
            return None, "not counted: the copy of the step with XLA attention does not fit"
        return copy * trips * count, "a copy of the step with XLA attention"
    one, two = (compile_target(builder(counting, devices, layers)).flops_per_device for layers in (1, 2))
    if one is None or two is None:
        return None, "not counted: the 1- and 2-layer copies of the step with XLA attention do not fit"
    per_device = one + (target.n_layers - 1) * (two - one)
    return per_device * trips * count, "1- and 2-layer unrolled copies of the step with XLA attention, extrapolated"


def compile_stage(cfg, profile: str, stage: str, topology: str, count_flops: bool = True) -> dict:
    """Compile `stage`'s step for `topology` and report memory per chip, FLOPs and the step time they imply."""
    builder = step_builder(stage)
    chip = chip_for(topology)
    devices = tpu_devices(topology)
    target = builder(cfg, devices, None)
    compiled = compile_target(target)
    fits = compiled.out_of_memory is None and compiled.memory["total"] <= chip.hbm_bytes
    report = {
        "stage": stage, "profile": profile, "topology": topology, "devices": len(devices), "chip": chip.name,
        "mesh": target.mesh_axes, "attention_impl": target.attention_impl, "fits": fits,
        "bytes": compiled.memory, "hbm_bytes": chip.hbm_bytes,
        "tokens_per_step": target.tokens_per_step, "model_flops_per_step": target.model_flops_per_step,
        "compile_seconds": round(compiled.seconds, 1),
    }
    if count_flops and fits:
        flops, method = compiled_flops_per_step(builder, cfg, devices, target, compiled)
        report.update(flops_per_step=flops, flops_method=method)
    else:
        reason = "the step does not fit" if count_flops else "skipped (--memory-only)"
        report.update(flops_per_step=None, flops_method=f"not counted: {reason}")
    report.update(implied_throughput(target, chip, len(devices)))
    if target.programs:
        report["programs"] = {name: program_report(program, chip, len(devices)) for name, program in target.programs}
        fits = report["fits"] = fits and all(program["fits"] for program in report["programs"].values())
    if not fits:
        report["largest_buffers"] = largest_buffers(target, compiled)
        report["shrink_with"] = list(target.shrink_hints)
    return report


def program_report(target: CompileTarget, chip: Chip, device_count: int) -> dict:
    """Memory, fits and FLOPs of one further program of a stage (`CompileTarget.programs`). Its FLOPs are XLA's
    count of the program as compiled: a loop body counts once (the sampler's layers and the decode loop's tokens),
    so they are set beside the model's count of one trip, not of the whole call."""
    compiled = compile_target(target)
    on_chip = compiled.memory["total"] + target.resident_bytes
    report = {"fits": compiled.out_of_memory is None and on_chip <= chip.hbm_bytes, "bytes": compiled.memory,
              "resident_bytes": target.resident_bytes, "total_with_resident": on_chip,
              "tokens_per_call": target.tokens_per_step, "model_flops_per_call": target.model_flops_per_step,
              "compiled_flops_one_trip": (compiled.flops_per_device * device_count
                                          if compiled.flops_per_device is not None else None),
              "compile_seconds": round(compiled.seconds, 1)}
    report.update(implied_throughput(target, chip, device_count))
    if not report["fits"]:
        report["largest_buffers"] = largest_buffers(target, compiled)
    return report


MFU_LEVELS = (1.0, 0.5)


def implied_throughput(target: CompileTarget, chip: Chip, device_count: int) -> dict:
    """Step seconds and tokens/s per chip if the model's FLOPs ran at the chip's bf16 peak x MFU.

    MFU is defined on the model's own FLOPs (recomputation is overhead it does not credit), so the implied
    times use the model count."""
    step_seconds, tokens_per_chip = {}, {}
    for mfu in MFU_LEVELS:
        seconds = target.model_flops_per_step / (device_count * chip.peak_bf16_flops * mfu)
        step_seconds[f"mfu_{round(mfu * 100)}"] = seconds
        tokens_per_chip[f"mfu_{round(mfu * 100)}"] = target.tokens_per_step / seconds / device_count
    return {"peak_bf16_flops_per_chip": chip.peak_bf16_flops, "step_seconds": step_seconds,
            "tokens_per_s_per_chip": tokens_per_chip}


def largest_buffers(target: CompileTarget, compiled: Compiled, count: int = 6) -> list[str]:
    """The compiler's own words, then the biggest per-device buffers: inputs by name and activations by shape."""
    import jax

    entries = []
    for name, tree in zip(target.arg_names, target.args):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            shard = leaf.sharding.shard_shape(leaf.shape)
            size = math.prod(shard) * leaf.dtype.itemsize
            entries.append((size, f"{_gib(size)} per device: {name}{jax.tree_util.keystr(path)} "
                                  f"{tuple(leaf.shape)} {leaf.dtype}, {tuple(shard)} on each device"))
    entries.extend((size, f"{_gib(size)} per device (from its shape): {name}") for name, size in target.activations)
    entries.sort(key=lambda entry: -entry[0])
    compiler = [f"compiler: {_first_line(Exception(compiled.out_of_memory))}"] if compiled.out_of_memory else []
    return compiler + [line for _, line in entries[:count]]


def _gib(size: float) -> str:
    return f"{size / GiB:.2f} GiB"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def format_report(report: dict) -> str:
    """The human-readable report of `compile_stage`."""
    mesh = " x ".join(f"{axis} {size}" for axis, size in report["mesh"].items())
    lines = [f"{report['stage']} ({report['profile']}) on {report['topology']}: {report['devices']} x "
             f"{report['chip']}, mesh {mesh}, attention {report['attention_impl']}, "
             f"compiled in {report['compile_seconds']} s"]
    hbm = report["hbm_bytes"]
    refused = report["bytes"]["outputs"] is None
    lines.append("memory per chip" + (" (the compiler refused the program: HBM too small)" if refused else "") + ":")
    for field in ("arguments", "outputs", "aliased", "temporaries", "generated_code", "total"):
        size = report["bytes"][field]
        note = " (donated inputs reused as outputs)" if field == "aliased" else ""
        note = " (at least)" if field == "total" and refused else note
        lines.append(f"  {field:<15} {_gib(size) if size is not None else 'unknown':>12}{note}")
    lines.append(f"  {'HBM':<15} {_gib(hbm):>12}  {report['bytes']['total'] / hbm:.0%} used: "
                 f"{'fits' if report['fits'] else 'DOES NOT FIT'}")
    model_flops = report["model_flops_per_step"]
    if report["flops_per_step"]:
        lines.append(f"FLOPs per step:  compiled {report['flops_per_step']:.4g} ({report['flops_method']}), "
                     f"model {model_flops:.4g}, ratio {report['flops_per_step'] / model_flops:.3f}")
    else:
        lines.append(f"FLOPs per step:  model {model_flops:.4g} (compiled count: {report['flops_method']})")
    lines.append(f"tokens per step: {report['tokens_per_step']:,}")
    for key, seconds in report["step_seconds"].items():
        mfu = key.removeprefix("mfu_")
        lines.append(f"at {mfu:>3}% MFU ({report['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 peak): "
                     f"{seconds:.3f} s per step, {report['tokens_per_s_per_chip'][key]:,.0f} tokens/s per chip")
    for name, program in report.get("programs", {}).items():
        lines.append(f"{name}: {_gib(program['total_with_resident'])} per chip with the resident training state "
                     f"({_gib(program['bytes']['total'])} its own, {_gib(program['resident_bytes'])} resident): "
                     f"{'fits' if program['fits'] else 'DOES NOT FIT'}; {program['tokens_per_call']:,} tokens per "
                     f"call, model {program['model_flops_per_call']:.4g} FLOPs, "
                     f"{program['step_seconds']['mfu_50']:.3f} s at 50% MFU; compiled in {program['compile_seconds']} s")
    if not report["fits"]:
        lines.append("largest buffers:")
        lines.extend(f"  {line}" for line in report["largest_buffers"])
        lines.append("config keys that shrink them:")
        lines.extend(f"  {line}" for line in report["shrink_with"])
    return "\n".join(lines)
