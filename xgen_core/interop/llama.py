"""Our Decoder as Hugging Face's `LlamaForCausalLM`: the config fields and the weight names and layouts.

The two forward passes are the same function (pre-norm RMSNorm blocks, GQA attention where query head h reads
KV head h // (n_q_heads / n_kv_heads), SwiGLU, no biases), and RoPE needs no permutation: `apply_rope`
(xgen_core/model/layers.py) rotates the two halves of each head (x[:d/2], x[d/2:]) with frequencies
theta^(-2i/d), which is exactly transformers' `rotate_half`. Only the layouts differ:

    ours                                        LlamaForCausalLM (torch Linear: weight is (out, in))
    embedding        (vocab, d)                 model.embed_tokens.weight          (vocab, d)
    attention/q      (d, q_heads, head_dim)     model.layers.N.self_attn.q_proj    (q_heads * head_dim, d)
    attention/k, v   (d, kv_heads, head_dim)    ...self_attn.k_proj, v_proj        (kv_heads * head_dim, d)
    attention/o      (q_heads, head_dim, d)     ...self_attn.o_proj                (d, q_heads * head_dim)
    mlp/gate, up     (d, mlp)                   ...mlp.gate_proj, up_proj          (mlp, d)
    mlp/down         (mlp, d)                   ...mlp.down_proj                   (d, mlp)
    attention_norm, mlp_norm /scale (d,)        ...input_layernorm, post_attention_layernorm
    final_norm/scale (d,)                       model.norm.weight
    lm_head          (d, vocab)                 lm_head.weight (absent when tied)  (vocab, d)
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from xgen_core.errors import InputError
from xgen_core.model.presets import PRESETS, ModelSpec

ARCHITECTURE = "LlamaForCausalLM"


def llama_config(spec: ModelSpec, special: dict) -> dict:
    """config.json of `spec` as a LlamaForCausalLM; `special` is our tokenizer config (bos / eos / pad ids).

    RoPE theta is written both as transformers 5 reads it (`rope_parameters`) and as version 4 and other Llama
    readers do (`rope_theta`).
    """
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "intermediate_size": spec.mlp_dim,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_q_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_seq_len,
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": spec.rope_theta},
        "tie_word_embeddings": spec.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": special["bos_id"],
        "eos_token_id": special["eos_id"],
        "pad_token_id": special["pad_id"],
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def spec_fields(config) -> dict:
    """ModelSpec fields (name aside) of a transformers LlamaConfig; refuses what our decoder does not compute."""
    if getattr(config, "model_type", None) != "llama":
        raise InputError(f"a {getattr(config, 'model_type', None)!r} model, not a Llama one (model_type 'llama'): "
                         "only LlamaForCausalLM checkpoints can be imported")
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    refusals = {
        "hidden_act": (config.hidden_act, "silu"),
        "attention_bias": (bool(getattr(config, "attention_bias", False)), False),
        "mlp_bias": (bool(getattr(config, "mlp_bias", False)), False),
        "rope type": (rope.get("rope_type", "default"), "default"),
    }
    for what, (value, supported) in refusals.items():
        if value != supported:
            raise InputError(f"the Llama config has {what} {value!r}; our decoder computes only {supported!r}")
    if theta is None:
        raise InputError("the Llama config gives no RoPE theta (rope_parameters.rope_theta or rope_theta)")
    n_q_heads = config.num_attention_heads
    return {
        "vocab_size": config.vocab_size,
        "d_model": config.hidden_size,
        "n_layers": config.num_hidden_layers,
        "n_q_heads": n_q_heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or n_q_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // n_q_heads,
        "mlp_dim": config.intermediate_size,
        "rope_theta": float(theta),
        "tie_embeddings": bool(config.tie_word_embeddings),
        "max_seq_len": config.max_position_embeddings,
        "norm_eps": float(config.rms_norm_eps),
    }


def preset_and_overrides(fields: dict, preset: str | None = None) -> tuple[str, dict]:
    """The preset to name a model by and the fields that differ from it: the given preset, else the one with the
    fewest differing fields (an exact match has none)."""
    def differing(spec: ModelSpec) -> dict:
        return {name: value for name, value in fields.items() if getattr(spec, name) != value}

    if preset is not None:
        if preset not in PRESETS:
            raise InputError(f"unknown model preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        return preset, differing(PRESETS[preset])
    name = min(PRESETS, key=lambda candidate: len(differing(PRESETS[candidate])))
    return name, differing(PRESETS[name])


def hf_tensors(embedding, lm_head, final_norm, blocks, spec: ModelSpec) -> dict[str, np.ndarray]:
    """LlamaForCausalLM state-dict names -> float32 arrays, from our weights with the blocks stacked on a
    leading layer axis (xgen_core.infer.sampler.DecoderWeights)."""
    f32 = lambda array: np.ascontiguousarray(np.asarray(array, dtype=np.float32))  # noqa: E731
    d, q_width, kv_width = spec.d_model, spec.n_q_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    tensors = {"model.embed_tokens.weight": f32(embedding), "model.norm.weight": f32(final_norm["scale"])}
    if not spec.tie_embeddings:
        tensors["lm_head.weight"] = f32(np.asarray(lm_head).T)
    attention, mlp = blocks["attention"], blocks["mlp"]
    for index in range(spec.n_layers):
        prefix = f"model.layers.{index}"
        layer = lambda tree, name: np.asarray(tree[name][index])  # noqa: E731
        tensors.update({
            f"{prefix}.self_attn.q_proj.weight": f32(layer(attention, "q").reshape(d, q_width).T),
            f"{prefix}.self_attn.k_proj.weight": f32(layer(attention, "k").reshape(d, kv_width).T),
            f"{prefix}.self_attn.v_proj.weight": f32(layer(attention, "v").reshape(d, kv_width).T),
            f"{prefix}.self_attn.o_proj.weight": f32(layer(attention, "o").reshape(q_width, d).T),
            f"{prefix}.mlp.gate_proj.weight": f32(layer(mlp, "gate").T),
            f"{prefix}.mlp.up_proj.weight": f32(layer(mlp, "up").T),
            f"{prefix}.mlp.down_proj.weight": f32(layer(mlp, "down").T),
            f"{prefix}.input_layernorm.weight": f32(blocks["attention_norm"]["scale"][index]),
            f"{prefix}.post_attention_layernorm.weight": f32(blocks["mlp_norm"]["scale"][index]),
        })
    return tensors


def decoder_params(tensors: Mapping[str, np.ndarray], spec: ModelSpec, scan_layers: bool, dtype) -> dict:
    """Our Decoder's params tree (scanned `layers` or unrolled `layer_<i>`) from LlamaForCausalLM tensors."""
    expected = hf_shapes(spec)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise InputError(f"the checkpoint lacks {len(missing)} tensor(s) a {spec.n_layers}-layer Llama has, "
                         f"e.g. {missing[:3]}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise InputError(f"tensor {name} has shape {tuple(tensors[name].shape)}, the config implies {shape}")
    cast = lambda array: np.asarray(array, dtype=dtype)  # noqa: E731
    d, h, kv, hd = spec.d_model, spec.n_q_heads, spec.n_kv_heads, spec.head_dim

    def block(index: int) -> dict:
        weight = lambda name: np.asarray(tensors[f"model.layers.{index}.{name}.weight"])  # noqa: E731
        return {
            "attention": {
                "q": cast(weight("self_attn.q_proj").T.reshape(d, h, hd)),
                "k": cast(weight("self_attn.k_proj").T.reshape(d, kv, hd)),
                "v": cast(weight("self_attn.v_proj").T.reshape(d, kv, hd)),
                "o": cast(weight("self_attn.o_proj").T.reshape(h, hd, d)),
            },
            "attention_norm": {"scale": cast(weight("input_layernorm"))},
            "mlp": {name: cast(weight(f"mlp.{name}_proj").T) for name in ("gate", "up", "down")},
            "mlp_norm": {"scale": cast(weight("post_attention_layernorm"))},
        }

    blocks = [block(index) for index in range(spec.n_layers)]
    params = {"embedding": cast(tensors["model.embed_tokens.weight"]),
              "final_norm": {"scale": cast(tensors["model.norm.weight"])}}
    if not spec.tie_embeddings:
        params["lm_head"] = cast(np.asarray(tensors["lm_head.weight"]).T)
    if scan_layers:
        import jax

        params["layers"] = jax.tree.map(lambda *leaves: np.stack(leaves), *blocks)
    else:
        params.update({f"layer_{index}": layer for index, layer in enumerate(blocks)})
    return params


def hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the LlamaForCausalLM of `spec` and its shape."""
    d, q_width, kv_width, m = spec.d_model, spec.n_q_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim, spec.mlp_dim
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, d), "model.norm.weight": (d,)}
    if not spec.tie_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, d)
    for index in range(spec.n_layers):
        prefix = f"model.layers.{index}"
        shapes.update({
            f"{prefix}.self_attn.q_proj.weight": (q_width, d),
            f"{prefix}.self_attn.k_proj.weight": (kv_width, d),
            f"{prefix}.self_attn.v_proj.weight": (kv_width, d),
            f"{prefix}.self_attn.o_proj.weight": (d, q_width),
            f"{prefix}.mlp.gate_proj.weight": (m, d),
            f"{prefix}.mlp.up_proj.weight": (m, d),
            f"{prefix}.mlp.down_proj.weight": (d, m),
            f"{prefix}.input_layernorm.weight": (d,),
            f"{prefix}.post_attention_layernorm.weight": (d,),
        })
    return shapes
