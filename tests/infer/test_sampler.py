import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xgen_core.errors import XgenError
from xgen_core.infer.sampler import (
    SamplingConfig, decoder_weights, generate, greedy_by_recomputing, sample_next,
)
from xgen_core.model.decoder import Decoder
from xgen_core.model.presets import get_preset

# Rows of different lengths, so most rows are left-padded by different amounts.
PROMPTS = [[5, 17, 200, 3, 99, 41, 7], [300], [12, 12, 12, 400, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
                                                 32, 33],
           [8, 250, 3]]


def random_model(scan_layers=True, compute_dtype=jnp.float32, preset="micro"):
    spec = get_preset(preset)
    model = Decoder(spec, attention_impl="xla", compute_dtype=compute_dtype, scan_layers=scan_layers)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(3), tokens, tokens, tokens + 1))["params"]
    # Sharper logits than the 0.02-stddev init gives, so greedy choices are not near-ties.
    params["embedding"] = params["embedding"] * 50
    return spec, model, params


@pytest.mark.parametrize("scan_layers", [True, False])
def test_greedy_with_cache_equals_greedy_by_recomputing_the_full_forward(scan_layers):
    spec, model, params = random_model(scan_layers=scan_layers)
    config = SamplingConfig(max_new_tokens=24, greedy=True)
    cached = generate(decoder_weights(params, spec), spec, PROMPTS, config, jax.random.key(0),
                      compute_dtype=jnp.float32, attention_impl="xla")
    recomputed = greedy_by_recomputing(model, params, PROMPTS, config.max_new_tokens, length_bucket=8)
    assert [row.completion_ids for row in cached] == recomputed
    # Not a degenerate model: rows continue differently and tokens vary within a row.
    assert len({tuple(ids) for ids in recomputed}) == len(PROMPTS)
    assert all(len(set(ids)) > 3 for ids in recomputed)


def test_a_row_generates_the_same_alone_as_beside_longer_rows():
    spec, model, params = random_model()
    weights = decoder_weights(params, spec)
    config = SamplingConfig(max_new_tokens=12, greedy=True)
    batched = generate(weights, spec, PROMPTS, config, jax.random.key(0), compute_dtype=jnp.float32,
                       attention_impl="xla")
    for prompt, row in zip(PROMPTS, batched):
        alone = generate(weights, spec, [prompt], config, jax.random.key(0), compute_dtype=jnp.float32,
                         attention_impl="xla")
        assert alone[0].completion_ids == row.completion_ids


def test_bf16_greedy_with_cache_equals_recomputing_on_the_tiny_preset():
    spec, model, params = random_model(compute_dtype=jnp.bfloat16, preset="tiny")
    config = SamplingConfig(max_new_tokens=16, greedy=True)
    cached = generate(decoder_weights(params, spec), spec, PROMPTS, config, jax.random.key(0),
                      compute_dtype=jnp.bfloat16, attention_impl="xla")
    recomputed = greedy_by_recomputing(model, params, PROMPTS, config.max_new_tokens, length_bucket=8)
    assert [row.completion_ids for row in cached] == recomputed


def test_stop_tokens_end_a_row_and_are_kept_as_its_last_id():
    spec, model, params = random_model()
    weights = decoder_weights(params, spec)
    free = generate(weights, spec, PROMPTS, SamplingConfig(max_new_tokens=10, greedy=True), jax.random.key(0),
                    compute_dtype=jnp.float32, attention_impl="xla")
    stop = free[0].completion_ids[3]
    stopped = generate(weights, spec, PROMPTS, SamplingConfig(max_new_tokens=10, greedy=True, stop_tokens=(stop,)),
                       jax.random.key(0), compute_dtype=jnp.float32, attention_impl="xla")
    first = stopped[0]
    assert first.finish_reason == "stop"
    assert first.completion_ids == free[0].completion_ids[: free[0].completion_ids.index(stop) + 1]
    for row_free, row_stopped in zip(free, stopped):
        ids = row_free.completion_ids
        expected = ids[: ids.index(stop) + 1] if stop in ids else ids
        assert row_stopped.completion_ids == expected
        assert row_stopped.finish_reason == ("stop" if stop in ids else "length")


def test_sampling_depends_on_the_key_and_repeats_with_the_same_key():
    spec, model, params = random_model()
    weights = decoder_weights(params, spec)
    config = SamplingConfig(max_new_tokens=16, temperature=2.0)
    run = lambda seed: [g.completion_ids for g in generate(weights, spec, PROMPTS, config, jax.random.key(seed),
                                                           compute_dtype=jnp.float32, attention_impl="xla")]
    assert run(1) == run(1)
    assert run(1) != run(2)


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000, jnp.float32))
    keys = jax.random.split(jax.random.key(0), 1)[0]
    draw = lambda **kw: np.asarray(sample_next(logits, keys, jnp.bool_(False), jnp.float32(kw.get("t", 1.0)),
                                               jnp.float32(kw.get("p", 1.0)), jnp.int32(kw.get("k", 0))))
    assert set(draw(k=2)) == {0, 1}
    assert set(draw(p=0.7)) == {0, 1}  # 0.5 < 0.7, so the second token is needed; 0.8 >= 0.7 stops there
    assert set(draw(p=0.5)) == {0}
    assert set(draw()) == {0, 1, 2, 3}
    assert set(draw(k=3, p=0.9)) == {0, 1, 2}
    # The frequencies follow the renormalised distribution over the kept tokens.
    counts = np.bincount(draw(k=2), minlength=4) / 2000
    assert abs(counts[0] - 0.5 / 0.8) < 0.05
    greedy = sample_next(logits[:1], keys, jnp.bool_(True), jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0))
    assert int(greedy[0]) == 0


def test_bad_requests_get_clear_errors():
    spec, model, params = random_model()
    weights = decoder_weights(params, spec)
    with pytest.raises(XgenError, match="empty"):
        generate(weights, spec, [[1], []], SamplingConfig(max_new_tokens=2, greedy=True), jax.random.key(0))
    with pytest.raises(XgenError, match="outside the vocabulary"):
        generate(weights, spec, [[1, spec.vocab_size]], SamplingConfig(max_new_tokens=2, greedy=True),
                 jax.random.key(0))
    with pytest.raises(XgenError, match="context"):
        generate(weights, spec, [[1] * 100], SamplingConfig(max_new_tokens=spec.max_seq_len, greedy=True),
                 jax.random.key(0))
    with pytest.raises(XgenError, match="temperature"):
        SamplingConfig(max_new_tokens=2, temperature=0.0)
    with pytest.raises(XgenError, match="top_p"):
        SamplingConfig(max_new_tokens=2, top_p=0.0)
