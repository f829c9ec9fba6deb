import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.model.decoder import Decoder
from xgen_core.model.info import count_params, training_flops_per_token
from xgen_core.model.presets import get_preset


def table1_params(layers, mlp, tied, d=4096, vocab=102_400, q_heads=32, kv_heads=8, head=128):
    """Table 1 arithmetic, independent of the model code: Llama-2 blocks without biases."""
    attention = d * q_heads * head * 2 + d * kv_heads * head * 2
    block = attention + 3 * d * mlp + 2 * d
    embedding = vocab * d * (1 if tied else 2)
    return layers * block + d + embedding, embedding


def test_xgen_small_4b_parameter_count_follows_table1():
    counts = count_params(get_preset("xgen-small-4b"))
    assert (counts.total, counts.embedding) == table1_params(layers=28, mlp=8192, tied=True)
    assert counts.total == 4_412_641_280 and counts.non_embedding == 3_993_210_880


def test_xgen_small_9b_parameter_count_follows_table1():
    counts = count_params(get_preset("xgen-small-9b"))
    assert (counts.total, counts.embedding) == table1_params(layers=45, mlp=14_336, tied=False)
    assert counts.total == 10_653_904_896 and counts.non_embedding == 9_815_044_096


def test_flops_per_token_counts_gqa_and_halves_causal_attention():
    spec = get_preset("micro")
    mha = dataclasses.replace(spec, n_kv_heads=spec.n_q_heads)
    d, hd = spec.d_model, spec.head_dim
    # Each extra KV head adds a k and a v projection: 2 x 2 x d x head_dim forward FLOPs, x3 for training.
    extra_kv_heads = spec.n_q_heads - spec.n_kv_heads
    assert training_flops_per_token(mha, 64) - training_flops_per_token(spec, 64) == (
        3 * spec.n_layers * extra_kv_heads * 2 * 2 * d * hd
    )
    # Doubling the sequence adds causal attention: 3 x layers x (4 x seq x heads x head_dim / 2).
    assert training_flops_per_token(spec, 128) - training_flops_per_token(spec, 64) == (
        3 * spec.n_layers * 4 * 64 * spec.n_q_heads * hd / 2
    )


@functools.lru_cache(maxsize=None)
def init_micro(compute_dtype=jnp.float32, tie=False):
    spec = dataclasses.replace(get_preset("micro"), tie_embeddings=tie)
    model = Decoder(spec, attention_impl="xla", compute_dtype=compute_dtype)
    tokens = jnp.zeros((1, 8), jnp.int32)
    return model, nn.unbox(model.init(jax.random.key(0), tokens, tokens, tokens))["params"]


def test_params_and_logits_are_float32_under_bfloat16_compute():
    model, params = init_micro(jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    tokens = jnp.ones((1, 16), jnp.int32)
    logits = model.apply({"params": params}, tokens, jnp.arange(16)[None], tokens)
    assert logits.dtype == jnp.float32 and logits.shape == (1, 16, model.spec.vocab_size)


def test_tied_model_has_no_output_head():
    _, tied = init_micro(tie=True)
    _, untied = init_micro(tie=False)
    assert "lm_head" not in tied and "lm_head" in untied


def test_packed_document_sees_only_itself():
    """Logits of a document packed after another equal the logits of that document alone."""
    model, params = init_micro()
    rng = np.random.default_rng(1)
    first, second = rng.integers(0, 512, 11), rng.integers(0, 512, 21)
    packed = jnp.asarray(np.concatenate([first, second])[None], jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(11), np.arange(21)])[None], jnp.int32)
    segments = jnp.asarray(np.repeat([1, 2], [11, 21])[None], jnp.int32)
    packed_logits = model.apply({"params": params}, packed, positions, segments)
    alone = jnp.asarray(second[None], jnp.int32)
    alone_logits = model.apply({"params": params}, alone, jnp.arange(21)[None], jnp.ones_like(alone))
    np.testing.assert_allclose(packed_logits[0, 11:], alone_logits[0], atol=1e-4)


def test_scanned_and_unrolled_layers_agree():
    spec = get_preset("micro")
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 512, (2, 16)), jnp.int32)
    positions, segments = jnp.tile(jnp.arange(16), (2, 1)), jnp.ones_like(tokens)
    scanned = Decoder(spec, attention_impl="xla", compute_dtype=jnp.float32)
    unrolled = Decoder(spec, attention_impl="xla", compute_dtype=jnp.float32, scan_layers=False)
    params = nn.unbox(scanned.init(jax.random.key(0), tokens, positions, segments))["params"]
    layer_params = {
        f"layer_{i}": jax.tree.map(lambda x: x[i], params["layers"]) for i in range(spec.n_layers)
    }
    unrolled_params = {**{k: v for k, v in params.items() if k != "layers"}, **layer_params}
    np.testing.assert_allclose(
        scanned.apply({"params": params}, tokens, positions, segments),
        unrolled.apply({"params": unrolled_params}, tokens, positions, segments),
        atol=1e-5,
    )
