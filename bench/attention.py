"""Memory and time of attention forward + backward against sequence length: the reference vs blockwise.

    .venv/bin/python bench/attention.py --lengths 1024,2048,4096,8192,16384,32768 --reference-max 8192

The attention layer of the `tiny` preset (8 query heads sharing 2 KV heads of 32, bfloat16 compute), one packed
row of documents of 1,024 tokens. For each length and implementation: compile jax.grad of a weighted sum of the
output with respect to q, k and v, read XLA's buffer assignment (memory_analysis: the scratch memory the
compiled program needs besides its inputs and outputs, its peak working set), and time `--repeats` calls after a
warm-up (median). The reference is xgen_core/model/attention.py's xla_attention (the CPU default: query blocks
against the keys up to their end, score matrix materialised); it is compiled only up to `--reference-max`
(its scratch memory grows with the square of the length: 35 GB at 32k). Ratios are blockwise / reference in
this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from xgen_core.train.host import configure_cpu_training

configure_cpu_training()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from xgen_core.model import attention as attn  # noqa: E402
from xgen_core.model.blockwise import blockwise_attention  # noqa: E402
from xgen_core.model.presets import get_preset  # noqa: E402

DOCUMENT_TOKENS = 1024


def inputs(seq_len: int, dtype):
    spec = get_preset("tiny")
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (1, seq_len, spec.n_q_heads, spec.head_dim), dtype)
    k = jax.random.normal(keys[1], (1, seq_len, spec.n_kv_heads, spec.head_dim), dtype)
    v = jax.random.normal(keys[2], (1, seq_len, spec.n_kv_heads, spec.head_dim), dtype)
    cotangent = jax.random.normal(keys[3], q.shape, dtype)
    segments = jnp.asarray(1 + np.arange(seq_len) // DOCUMENT_TOKENS, jnp.int32)[None]
    return q, k, v, segments, cotangent


def forward_backward(fn):
    def loss(q, k, v, segments, cotangent):
        return jnp.sum(fn(q, k, v, segments).astype(jnp.float32) * cotangent.astype(jnp.float32))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def measure(fn, seq_len: int, dtype, repeats: int) -> dict:
    args = inputs(seq_len, dtype)
    started = time.perf_counter()
    compiled = forward_backward(fn).lower(*args).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - started)
    return {"temp_mib": memory.temp_size_in_bytes / 2**20, "seconds": statistics.median(times),
            "compile_s": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--reference-max", type=int, default=8192)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype)
    implementations = {
        "reference": attn.xla_attention,
        "blockwise": lambda q, k, v, s: blockwise_attention(q, k, v, s, block=args.block),
    }
    rows = []
    print("| tokens | reference scratch MiB | blockwise scratch MiB | memory ratio | reference s | blockwise s "
          "| time ratio |")
    print("|---|---|---|---|---|---|---|")
    for seq_len in (int(n) for n in args.lengths.split(",")):
        row = {"tokens": seq_len}
        for name, fn in implementations.items():
            if name == "reference" and seq_len > args.reference_max:
                continue
            row[name] = measure(fn, seq_len, dtype, args.repeats)
        rows.append(row)
        ref, blk = row.get("reference"), row["blockwise"]
        cell = lambda m, key, fmt: format(m[key], fmt) if m else "not compiled"  # noqa: E731
        print(f"| {seq_len:,} | {cell(ref, 'temp_mib', '.1f')} | {blk['temp_mib']:.1f} | "
              f"{(blk['temp_mib'] / ref['temp_mib']) if ref else float('nan'):.3f} | {cell(ref, 'seconds', '.3f')} | "
              f"{blk['seconds']:.3f} | {(blk['seconds'] / ref['seconds']) if ref else float('nan'):.2f} |",
              flush=True)
    print(json.dumps({"device": jax.devices()[0].device_kind, "block": args.block, "dtype": args.dtype,
                      "rows": rows}))


if __name__ == "__main__":
    main()
