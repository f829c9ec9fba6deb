"""Sampler throughput: KV-cached generation against recomputing the full forward per token, in one run.

    .venv/bin/python bench/sampler.py [--preset tiny] [--batch 8] [--prompt-len 64] [--new-tokens 256]

A random model of the preset (max_seq_len raised to fit prompt + new tokens), bfloat16 compute, greedy
decoding in both paths so they do the same work and must produce the same tokens (checked and printed).
Compilation is excluded from both timings: the cached path runs once before it is timed, and the
recompute path's forward is compiled for each of its length buckets first. The recompute path runs the
training forward over the sequence so far rounded up to `--recompute-bucket` tokens, as
xgen_core.infer.sampler.greedy_by_recomputing does. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.infer.sampler import (
    SamplingConfig, bucket_shape, decode, decoder_weights, greedy_by_recomputing, pad_prompts, prefill,
)
from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset


def random_prompts(batch: int, prompt_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(prompt_len // 2, prompt_len + 1, size=batch)
    lengths[0] = prompt_len
    return [rng.integers(1, vocab, size=length).tolist() for length in lengths]


def time_cached(weights, spec, prompts, max_new: int, compute_dtype) -> tuple[float, float, np.ndarray]:
    """(prefill seconds, decode seconds, tokens) of one timed call after a compiling one."""
    batch, prompt_len, cache_len = bucket_shape(len(prompts), max(map(len, prompts)), max_new)
    tokens, positions, segments = pad_prompts(prompts, batch, prompt_len)
    controls = (jnp.bool_(True), jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0))
    stop_ids = np.full((8,), -1, np.int32)
    result = None
    for _ in range(2):  # the first call compiles
        start = time.perf_counter()
        cache, logits = prefill(weights, tokens, positions, segments, spec=spec, cache_len=cache_len,
                                compute_dtype=compute_dtype, attention_impl="auto")
        jax.block_until_ready((cache, logits))
        prefilled = time.perf_counter()
        out = decode(weights, cache, logits, positions[:, -1] + 1, jax.random.key(0), controls, stop_ids,
                     spec=spec, max_new_tokens=max_new, compute_dtype=compute_dtype)
        jax.block_until_ready(out)
        result = (prefilled - start, time.perf_counter() - prefilled, np.asarray(out[0])[: len(prompts)])
    return result


def time_recomputing(model, params, prompts, max_new: int, bucket: int) -> tuple[float, np.ndarray]:
    forward = jax.jit(model.apply)
    batch, prompt_len, cache_len = bucket_shape(len(prompts), max(map(len, prompts)), max_new)
    for visible in sorted({min(-(-slot // bucket) * bucket, cache_len) for slot in range(prompt_len, cache_len)}):
        zeros = jnp.zeros((batch, visible), jnp.int32)
        jax.block_until_ready(forward({"params": params}, zeros, zeros, zeros + 1))
    start = time.perf_counter()
    tokens = greedy_by_recomputing(model, params, prompts, max_new, length_bucket=bucket, forward=forward)
    return time.perf_counter() - start, np.asarray(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--recompute-bucket", type=int, default=32)
    args = parser.parse_args()

    base = get_preset(args.preset)
    spec = get_preset(args.preset, max_seq_len=max(base.max_seq_len, args.prompt_len + args.new_tokens))
    model = Decoder(spec, attention_impl="auto", compute_dtype=jnp.bfloat16)
    dummy = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), dummy, dummy, dummy + 1))["params"]
    params["embedding"] = params["embedding"] * 50  # sharper logits than the init's, as a trained model has
    prompts = random_prompts(args.batch, args.prompt_len, spec.vocab_size)
    SamplingConfig(max_new_tokens=args.new_tokens, greedy=True)  # validates the request

    prefill_s, decode_s, cached_tokens = time_cached(decoder_weights(params, spec), spec, prompts,
                                                     args.new_tokens, jnp.bfloat16)
    recompute_s, recomputed_tokens = time_recomputing(model, params, prompts, args.new_tokens,
                                                      args.recompute_bucket)
    generated = args.batch * args.new_tokens
    cached_s = prefill_s + decode_s
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(json.dumps({
        "preset": spec.name, "batch": args.batch, "prompt_tokens": sum(map(len, prompts)),
        "new_tokens_per_row": args.new_tokens, "backend": jax.default_backend(), "commit": commit,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "prefill_s": round(prefill_s, 4), "prefill_tokens_per_s": round(sum(map(len, prompts)) / prefill_s, 1),
        "decode_s": round(decode_s, 3), "decode_tokens_per_s": round(generated / decode_s, 1),
        "cached_tokens_per_s": round(generated / cached_s, 1),
        "recompute_s": round(recompute_s, 3), "recompute_tokens_per_s": round(generated / recompute_s, 1),
        "speedup": round(recompute_s / cached_s, 2),
        "same_tokens": bool(np.array_equal(cached_tokens, recomputed_tokens)),
    }))


if __name__ == "__main__":
    main()
