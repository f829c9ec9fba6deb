"""The Llama layout mapping and the config it needs, without torch: shapes, round trips, versions."""

import numpy as np
import pytest

from xgen_core import stages
from xgen_core.config import load_config
from xgen_core.errors import ConfigError, InputError
from xgen_core.interop.llama import decoder_params, hf_shapes, hf_tensors, preset_and_overrides
from xgen_core.model.presets import PRESETS, get_preset


def random_tensors(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in hf_shapes(spec).items()}


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("preset", ["micro", "tiny"])
def test_hf_tensors_round_trip_through_our_params(preset, scan_layers):
    spec = get_preset(preset)
    tensors = random_tensors(spec)
    params = decoder_params(tensors, spec, scan_layers, np.float32)
    if scan_layers:
        blocks = params["layers"]
    else:
        blocks = {group: {name: np.stack([params[f"layer_{i}"][group][name] for i in range(spec.n_layers)])
                          for name in params["layer_0"][group]} for group in params["layer_0"]}
    assert blocks["attention"]["q"].shape == (spec.n_layers, spec.d_model, spec.n_q_heads, spec.head_dim)
    back = hf_tensors(params["embedding"], params.get("lm_head"), params["final_norm"], blocks, spec)
    assert back.keys() == tensors.keys()
    assert all(np.array_equal(back[name], tensors[name]) for name in tensors)


def test_query_head_h_is_rows_h_times_head_dim_of_q_proj():
    """transformers views q_proj's output as (heads, head_dim): our head axis must be its leading factor."""
    spec = get_preset("micro")
    tensors = random_tensors(spec)
    params = decoder_params(tensors, spec, True, np.float32)
    q_proj = tensors["model.layers.1.self_attn.q_proj.weight"]
    head, within = 3, 5
    np.testing.assert_array_equal(params["layers"]["attention"]["q"][1][:, head, within],
                                  q_proj[head * spec.head_dim + within])


def test_missing_or_misshapen_tensors_are_refused_by_name():
    spec = get_preset("micro")
    tensors = random_tensors(spec)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(InputError, match="lacks 1 tensor"):
        decoder_params(tensors, spec, True, np.float32)
    tensors = random_tensors(spec)
    tensors["model.norm.weight"] = np.ones(3, np.float32)
    with pytest.raises(InputError, match=r"model.norm.weight has shape \(3,\)"):
        decoder_params(tensors, spec, True, np.float32)


def test_the_nearest_preset_names_a_model_and_the_rest_are_overrides():
    fields = {name: getattr(PRESETS["tiny"], name) for name in (
        "vocab_size", "d_model", "n_layers", "n_q_heads", "n_kv_heads", "head_dim", "mlp_dim", "rope_theta",
        "tie_embeddings", "max_seq_len", "norm_eps")}
    assert preset_and_overrides(fields) == ("tiny", {})
    assert preset_and_overrides({**fields, "rope_theta": 5e5}) == ("tiny", {"rope_theta": 5e5})
    assert preset_and_overrides(fields, "micro")[0] == "micro"
    with pytest.raises(InputError, match="unknown model preset"):
        preset_and_overrides(fields, "nano")


def test_preset_overrides_change_the_spec_and_leave_other_versions_alone():
    plain = load_config("tiny")
    assert "preset_overrides" not in plain.section_dump("model")  # versions from before the field stay
    changed = load_config("tiny", ["model.preset_overrides={rope_theta: 500000.0, tie_embeddings: false}"])
    assert changed.model.spec().rope_theta == 500_000.0 and changed.model.spec().tie_embeddings is False
    assert stages.resolve(changed, "pretrain").version != stages.resolve(plain, "pretrain").version
    with pytest.raises(ConfigError, match="unknown model field"):
        load_config("tiny", ["model.preset_overrides={dmodel: 8}"])
    with pytest.raises(ConfigError, match="tokenizer.vocab_size"):  # the tokenizer must fit the overridden rows
        load_config("tiny", ["model.preset_overrides={vocab_size: 300}"])
