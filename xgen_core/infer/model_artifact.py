"""A trained model from its stage artifact: the decoder it trained, its latest checkpoint's parameters and
the tokenizer it was trained with (found through the artifact's manifest)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from xgen_core import artifacts
from xgen_core.config import ModelConfig
from xgen_core.errors import XgenError
from xgen_core.storage import join, normalize_uri, store_for


@dataclasses.dataclass
class TrainedModel:
    uri: str
    step: int
    model: Any  # the training Decoder module
    params: Any
    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_config: dict


def _upstream_manifests(manifest: dict):
    """The manifests of an artifact's inputs that are stage artifacts, in input order."""
    for upstream in manifest.get("inputs", {}).values():
        if store_for(upstream).exists(join(upstream, artifacts.MANIFEST)):
            yield artifacts.read_manifest(upstream)


def _tokenizer_uri(manifest: dict) -> str:
    """The tokenizer artifact: a direct input, or (for a later training stage) one of its inputs' inputs."""
    inputs = manifest.get("inputs", {})
    if "tokenizer" in inputs:
        return inputs["tokenizer"]
    for parent in _upstream_manifests(manifest):
        try:
            return _tokenizer_uri(parent)
        except XgenError:
            continue
    raise XgenError(f"the {manifest.get('stage')} artifact {manifest.get('uri')} names no tokenizer among its inputs")


def _position_overrides(manifest: dict) -> dict:
    """RoPE base and maximum length of a length-extension stage (`<stage>.rope_theta` / `.max_seq_len` in its
    config), inherited by every stage trained from it (SFT after extend_128k); {} for the preset's own."""
    sections = manifest.get("config", {})
    own = sections.get(manifest.get("stage"), {})
    if "rope_theta" in own and "max_seq_len" in own:
        return {"rope_theta": own["rope_theta"], "max_seq_len": own["max_seq_len"]}
    for parent in _upstream_manifests(manifest):
        if "model" in parent.get("config", {}):  # a trained model's artifact, not data
            return _position_overrides(parent)
    return {}


def _restore_params(checkpoint_uri: str, model, train_config: dict):
    from xgen_core.train.checkpoint import Checkpointer
    from xgen_core.train.optimizer import make_optimizer
    from xgen_core.train.step import abstract_state

    checkpointer = Checkpointer(checkpoint_uri, keep=1, asynchronous=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise XgenError(f"no checkpoint in {checkpoint_uri}: the training stage has not saved one yet")
        # The optimizer state only has to have the right structure to be read back; the schedule's values
        # do not change it.
        tx = make_optimizer(optax.constant_schedule(0.0), b1=train_config["b1"], b2=train_config["b2"],
                            eps=train_config["eps"], weight_decay=train_config["weight_decay"],
                            grad_clip=train_config["grad_clip"])
        state_like = abstract_state(model, tx)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, state_like)
        state, _, _ = checkpointer.restore(step, state_like, shardings)
        return step, state.params
    finally:
        checkpointer.close()


def load_trained_model(uri: str, max_seq_len: int | None = None) -> TrainedModel:
    """The model of a training stage's artifact at its latest checkpoint; `max_seq_len` reads it at another
    context length than it was trained for (RoPE has no table to outgrow: how far it carries is what RULER asks)."""
    from xgen_core.tokens.tokenizer import load_tokenizer
    from xgen_core.train.loop import build_model

    uri = normalize_uri(uri)
    if not store_for(uri).exists(join(uri, artifacts.MANIFEST)):
        raise XgenError(f"{uri} is not a stage artifact (no {artifacts.MANIFEST}): pass a pretrain artifact")
    manifest = artifacts.read_manifest(uri)
    sections = manifest.get("config", {})
    if "model" not in sections or "train" not in sections:
        raise XgenError(f"{uri} is a {manifest.get('stage')} artifact, not a trained model's (no model/train config)")
    tokenizer, tokenizer_config = load_tokenizer(_tokenizer_uri(manifest))
    positions = _position_overrides(manifest) | ({"max_seq_len": max_seq_len} if max_seq_len else {})
    model = build_model(ModelConfig(**sections["model"]), tokenizer_config["vocab_size"], **positions)
    step, params = _restore_params(join(uri, "checkpoints"), model, sections["train"])
    return TrainedModel(uri, step, model, params, tokenizer, tokenizer_config)


def compute_dtype_of(trained: TrainedModel):
    return jnp.dtype(trained.model.compute_dtype)
