"""Compiled train-step throughput against the best large-matmul throughput of the same device, same run.

    .venv/bin/python bench/train_step.py --presets tiny,small-100m --compute-dtypes float32,bfloat16

For every preset and compute dtype: compile the real train step (model, AdamW, clipping, accumulation
scan; one device), time `--steps` steps after a warm-up, and report model TFLOP/s (MaxText-style FLOPs per
token, x3 for backward) and the ratio to the peak. The peak is the best square matmul measured before,
between and after the steps with f32 inputs and with bf16 inputs (both accumulating in f32), whichever is
higher.
On a GPU/TPU the ratio to the datasheet bf16 peak (MFU) is printed as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from xgen_core.train.host import configure_cpu_training

configure_cpu_training()  # before JAX is imported (see xgen_core/train/host.py), as the stage runner does

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np

from xgen_core.model.decoder import Decoder
from xgen_core.model.info import training_flops_per_token
from xgen_core.model.presets import get_preset
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.metrics import PEAK_FLOPS_BY_DEVICE_KIND
from xgen_core.train.optimizer import make_optimizer
from xgen_core.train.step import device_batch, init_state, make_train_step, state_shardings


def best_matmul_flops(size: int, repeats: int) -> dict[str, float]:
    keys = jax.random.split(jax.random.key(0), 2)
    results = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        a, b = (jax.random.normal(k, (size, size)).astype(dtype) for k in keys)
        matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
        matmul(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, b).block_until_ready()
            times.append(time.perf_counter() - start)
        results[name] = 2 * size**3 / min(times)
    return results


def random_rows(batch: int, seq_len: int, vocab: int, accum: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Packed-looking rows: four documents per row."""
    rng = np.random.default_rng(seed)
    row_len = seq_len + 1
    segment_ids = np.repeat(np.arange(1, 5), -(-row_len // 4))[:row_len]
    positions = np.concatenate([np.arange(np.sum(segment_ids == s)) for s in range(1, 5)])
    shape = (accum, batch // accum, row_len)
    return {
        "tokens": rng.integers(0, vocab, shape).astype(np.int32),
        "segment_ids": np.broadcast_to(segment_ids, shape).astype(np.int32).copy(),
        "positions": np.broadcast_to(positions, shape).astype(np.int32).copy(),
    }


def time_train_step(preset: str, compute_dtype: str, batch: int, seq_len: int, accum: int, steps: int,
                    attention_impl: str, remat: bool, scan_layers: bool, between_steps=lambda: None) -> dict:
    spec = get_preset(preset)
    model = Decoder(spec, attention_impl=attention_impl, compute_dtype=jnp.dtype(compute_dtype), remat=remat,
                    scan_layers=scan_layers)
    tx = make_optimizer(lambda step: 1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    mesh = mesh_lib.make_mesh(1, -1, 1)
    shardings = state_shardings(model, tx, mesh)
    state = init_state(model, tx, mesh, shardings, seed=0)
    step = make_train_step(model, tx, lambda s: 1e-4, mesh, shardings)
    rows = device_batch(random_rows(batch, seq_len, spec.vocab_size, accum), mesh, batch_axis=1)
    started = time.perf_counter()
    state, metrics = step(state, rows)
    jax.block_until_ready(metrics)
    compile_and_first = time.perf_counter() - started
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        state, metrics = step(state, rows)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - started)
        between_steps()
    tokens = batch * seq_len
    flops = training_flops_per_token(spec, seq_len) * tokens
    return {
        "preset": preset, "compute_dtype": compute_dtype, "batch": batch, "seq_len": seq_len, "accum": accum,
        "attention": attention_impl, "remat": remat, "scan_layers": scan_layers, "first_step_s": compile_and_first,
        "step_s_best": min(times), "step_s_median": statistics.median(times),
        "model_tflops_best": flops / min(times) / 1e12, "model_tflops_median": flops / statistics.median(times) / 1e12,
        "loss": float(metrics["loss"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,small-100m")
    parser.add_argument("--compute-dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--unrolled", action="store_true", help="layers unrolled instead of nn.scan")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    args = parser.parse_args()

    before = best_matmul_flops(args.matmul_size, args.matmul_repeats)
    # The peak is also sampled between steps, so that a step timed in a quiet moment of a shared machine
    # is not compared with a peak measured in a busy one (which would flatter the ratio).
    between = []
    results = [
        time_train_step(preset, dtype, args.batch, args.seq_len, args.accum, args.steps, args.attention, args.remat,
                        scan_layers=not args.unrolled,
                        between_steps=lambda: between.append(best_matmul_flops(args.matmul_size, 3)))
        for preset in args.presets.split(",") for dtype in args.compute_dtypes.split(",")
    ]
    after = best_matmul_flops(args.matmul_size, args.matmul_repeats)
    peaks = {name: max([before[name], after[name]] + [b[name] for b in between]) for name in before}
    peak = max(peaks.values())
    device = jax.devices()[0]
    datasheet = next(
        (f for prefix, f in PEAK_FLOPS_BY_DEVICE_KIND.items() if device.device_kind.startswith(prefix)), None
    )
    print(json.dumps({"device": device.device_kind, "platform": device.platform,
                      "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
                      "matmul_before_tflops": {k: v / 1e12 for k, v in before.items()},
                      "matmul_after_tflops": {k: v / 1e12 for k, v in after.items()}}))
    print("| preset | compute | batch x seq | step s (best / median) | model TFLOP/s (best) | of matmul peak |"
          + (" MFU (datasheet) |" if datasheet else ""))
    print("|---|---|---|---|---|---|" + ("---|" if datasheet else ""))
    for r in results:
        r["ratio_to_peak"] = r["model_tflops_best"] * 1e12 / peak
        line = (f"| {r['preset']} | {r['compute_dtype']} | {r['batch']} x {r['seq_len']} | "
                f"{r['step_s_best']:.3f} / {r['step_s_median']:.3f} | {r['model_tflops_best']:.3f} | "
                f"{r['ratio_to_peak']:.1%} |")
        if datasheet:
            line += f" {r['model_tflops_best'] * 1e12 / datasheet:.1%} |"
        print(line)
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
