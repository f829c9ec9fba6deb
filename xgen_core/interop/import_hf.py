"""`xgen model import-hf`: a Hugging Face `LlamaForCausalLM` checkpoint as a step-0 training artifact.

The artifact has the layout of a pretrain artifact whose training has not started: an Orbax checkpoint of step 0
in checkpoints/ (the imported parameters, a fresh optimizer state, an empty data position), the tokenizer in
tokenizer/ (our format), and a manifest with the model and train config, marked not complete. So
`xgen model generate --model URI` (and anything that loads a trained model) reads it, and
`xgen train pretrain --output URI` continues training from it in place, as it continues any stopped run.

The model config names the preset nearest to the checkpoint's shapes and replaces the fields that differ
(`model.preset_overrides`), so a checkpoint of any Llama shape imports.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from xgen_core import artifacts
from xgen_core.errors import InputError
from xgen_core.interop.export_hf import WEIGHTS_FILE, WEIGHTS_INDEX
from xgen_core.interop.llama import decoder_params, preset_and_overrides, spec_fields
from xgen_core.interop.tokenizer_files import read_hf_tokenizer
from xgen_core.storage import join, normalize_uri, store_for

STAGE = "import_hf"
CODE_VERSION = 1


def read_llama_config(hf_dir: str):
    from transformers import AutoConfig

    if not (Path(hf_dir) / "config.json").is_file():
        raise InputError(f"{hf_dir}: no config.json; pass the folder of a Hugging Face checkpoint")
    try:
        return AutoConfig.from_pretrained(hf_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{hf_dir}/config.json: transformers cannot read it ({exc})") from None


def read_tensors(hf_dir: str) -> dict:
    """Every tensor of the checkpoint's safetensors file(s), as numpy-compatible arrays (bf16 included)."""
    from safetensors import safe_open

    directory = Path(hf_dir)
    if (directory / WEIGHTS_INDEX).is_file():
        files = sorted(set(json.loads((directory / WEIGHTS_INDEX).read_text())["weight_map"].values()))
    elif (directory / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise InputError(f"{hf_dir}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX} (only safetensors checkpoints import)")
    tensors = {}
    for name in files:
        # framework "flax": jax arrays, which keep bfloat16 (numpy has no such dtype of its own)
        with safe_open(str(directory / name), framework="flax") as weights:
            tensors.update({key: weights.get_tensor(key) for key in weights.keys()})
    return tensors


def import_hf(hf_dir: str, out_uri: str, cfg, preset: str | None = None, log=print) -> dict:
    """Write the artifact at `out_uri` from the checkpoint in the local folder `hf_dir`; returns its manifest.

    `cfg` (an XgenConfig) gives the model settings the checkpoint does not decide (compute dtype, scanned layers,
    attention kernel) and the train section the resumed training uses."""
    import jax
    import jax.numpy as jnp
    import optax

    from xgen_core.localize import writable_directory
    from xgen_core.tokens.tokenizer import save_tokenizer
    from xgen_core.train.checkpoint import Checkpointer
    from xgen_core.train.loop import build_model
    from xgen_core.train.metrics import LossSpikeAlarm
    from xgen_core.train.optimizer import make_optimizer
    from xgen_core.train.step import TrainState

    out_uri = normalize_uri(out_uri)
    if store_for(out_uri).exists(join(out_uri, artifacts.MANIFEST)):
        raise InputError(f"{out_uri} already holds an artifact; an artifact is never overwritten: choose a new --out")
    started = _now()
    fields = spec_fields(read_llama_config(hf_dir))
    preset, overrides = preset_and_overrides(fields, preset)
    model_config = cfg.model.model_copy(update={"preset": preset, "preset_overrides": overrides})
    tokenizer, special = read_hf_tokenizer(hf_dir)
    model = build_model(model_config, special["vocab_size"])
    params = decoder_params(read_tensors(hf_dir), model.spec, model.scan_layers, model.param_dtype)
    params = jax.tree.map(jnp.asarray, params)
    train = cfg.train
    tx = make_optimizer(optax.constant_schedule(0.0), b1=train.b1, b2=train.b2, eps=train.eps,
                        weight_decay=train.weight_decay, grad_clip=train.grad_clip)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.split(jax.random.PRNGKey(train.seed))[1])
    _check_structure(model, tx, state)

    staging = artifacts.staging_uri(out_uri)
    try:
        with writable_directory(join(staging, "tokenizer")) as directory:
            save_tokenizer(tokenizer, special, directory)
        checkpointer = Checkpointer(join(staging, "checkpoints"), keep=1, asynchronous=False)
        alarm = LossSpikeAlarm(cfg.train_run.spike_factor, cfg.train_run.spike_warmup_steps)
        checkpointer.save(0, state, {}, {"alarm": alarm.get_state(), "process_count": 1})
        checkpointer.close()
        n_params = int(sum(leaf.size for leaf in jax.tree.leaves(params)))
        manifest = _manifest(hf_dir, out_uri, cfg, model_config, n_params, started)
        if not artifacts.commit(staging, out_uri, manifest):
            raise InputError(f"{out_uri}: another writer committed an artifact there first")
    except BaseException:
        store_for(staging).delete_prefix(staging)
        raise
    log(f"imported {hf_dir} ({n_params:,} parameters; preset {preset}"
        + (f" with {json.dumps(overrides)}" if overrides else "") + f") into {out_uri}")
    return manifest


def _check_structure(model, tx, state) -> None:
    """The imported state has exactly the tree, shapes and dtypes training restores (step.abstract_state)."""
    import jax

    from xgen_core.train.step import abstract_state

    expected = abstract_state(model, tx)
    if jax.tree.structure(expected) != jax.tree.structure(state):
        raise InputError("the imported parameters do not form the Decoder's parameter tree "
                         f"({jax.tree.structure(state.params)} vs {jax.tree.structure(expected.params)})")
    for (path, want), got in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(state)):
        if want.shape != got.shape or want.dtype != got.dtype:
            raise InputError(f"imported {jax.tree_util.keystr(path)}: {got.shape} {got.dtype}, the Decoder has "
                             f"{want.shape} {want.dtype}")


def _manifest(hf_dir: str, out_uri: str, cfg, model_config, n_params: int, started: str) -> dict:
    from xgen_core.storage import iter_files

    digest = artifacts.listing_digest(list(iter_files([str(Path(hf_dir).resolve())])))
    config = {"model": model_config.model_dump(mode="json"), "train": cfg.section_dump("train")}
    return {
        "stage": STAGE,
        "version": artifacts.stage_version(STAGE, CODE_VERSION, config, {"external": digest}),
        "uri": out_uri,
        "config": config,
        "runtime": {"train_run": cfg.section_dump("train_run")},
        "profile": cfg.profile,
        "inputs": {"tokenizer": join(out_uri, "tokenizer")},
        "external_inputs": [str(Path(hf_dir).resolve())],
        "input_versions": {"external": digest},
        "code_version": artifacts.code_version_label(CODE_VERSION),
        "counts": {"steps": 0, "parameters": n_params},
        "metrics": {},
        "started_at": started,
        "finished_at": _now(),
        # A training run that has not started: `xgen train pretrain --output URI` continues it in place.
        "complete": False,
    }


def resume_command(manifest: dict) -> str:
    """The command that continues training from an imported artifact (its model config spelled out)."""
    model = manifest["config"]["model"]
    overrides = model.get("preset_overrides")
    words = [f"xgen train pretrain --profile {manifest['profile']} --output {manifest['uri']}",
             f"--input tokenizer={manifest['inputs']['tokenizer']} --input pack=PACK_URI",
             f"model.preset={model['preset']}"]
    if overrides:
        words.append(f"'model.preset_overrides={json.dumps(overrides)}'")
    return " ".join(words)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
