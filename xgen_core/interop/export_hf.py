"""The `export_hf` stage: a trained model as a Hugging Face `LlamaForCausalLM` checkpoint.

The artifact directory is the checkpoint itself (`AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` read it as it is): config.json, generation_config.json, the safetensors
weights (sharded with an index past SHARD_BYTES, as `save_pretrained` does), and the tokenizer files.

Neither transformers nor torch is imported here: the files are plain JSON and safetensors written through
safetensors' numpy API (importing transformers' config classes imports torch where it is installed, tens of
seconds on a busy 2-core host for a few JSON files). tests/interop/ loads every file back with transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from xgen_core.interop.llama import hf_tensors, llama_config
from xgen_core.interop.tokenizer_files import write_hf_tokenizer

SHARD_BYTES = 5 * 1024**3  # save_pretrained's default max_shard_size
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


def export_model(spec, params, tokenizer, special: dict, directory: Path, shard_bytes: int = SHARD_BYTES) -> dict:
    """Write the LlamaForCausalLM checkpoint of `params` (a Decoder's, scanned or unrolled) into `directory`.

    Returns {"files": [...], "parameters": int, "config": config.json's content}."""
    from xgen_core.infer.sampler import decoder_weights

    directory.mkdir(parents=True, exist_ok=True)
    weights = decoder_weights(params, spec)
    tensors = hf_tensors(weights.embedding, weights.lm_head, weights.final_norm, weights.blocks, spec)
    config = llama_config(spec, special)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": special["bos_id"], "eos_token_id": special["eos_id"],
                  "pad_token_id": special["pad_id"]}
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    files = ["config.json", "generation_config.json", *write_safetensors(tensors, directory, shard_bytes)]
    files += write_hf_tokenizer(tokenizer, special, directory, model_max_length=spec.max_seq_len)
    return {"files": files, "parameters": int(sum(t.size for t in tensors.values())), "config": config}


def write_safetensors(tensors: dict[str, np.ndarray], directory: Path, shard_bytes: int) -> list[str]:
    """One model.safetensors, or numbered shards of at most `shard_bytes` (a larger tensor alone) and the index."""
    from safetensors.numpy import save_file as save_private_file

    def save_file(shard: dict, path: str, metadata: dict) -> None:
        save_private_file(shard, path, metadata=metadata)
        # safetensors creates its files readable by their owner only; give them the folder's read permissions
        os.chmod(path, directory.stat().st_mode & 0o666)

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += tensor.nbytes
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return [WEIGHTS_FILE]
    names = [f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors" for index in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({tensor_name: name for tensor_name in shard})
    index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))}, "weight_map": weight_map}
    (directory / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, WEIGHTS_INDEX]


def run(ctx) -> dict:
    """The `export_hf` stage: the latest checkpoint of its training-stage input as a Hugging Face checkpoint."""
    from xgen_core.infer.model_artifact import load_trained_model
    from xgen_core.localize import writable_directory

    trained = load_trained_model(ctx.model_input())
    with writable_directory(ctx.output) as directory:
        exported = export_model(trained.model.spec, trained.params, trained.tokenizer, trained.tokenizer_config,
                                Path(directory))
    config = exported["config"]
    ctx.log(f"exported step {trained.step} of {trained.uri} as {config['architectures'][0]} "
            f"({exported['parameters']:,} parameters, {len(exported['files'])} files)")
    return {
        "counts": {"parameters": exported["parameters"], "files": len(exported["files"]), "step": trained.step},
        "metrics": {"architecture": config["architectures"][0], "files": exported["files"],
                    "model": trained.uri, "step": trained.step},
    }


def report_section(manifest: dict, uri: str, folder: str) -> str:
    metrics = manifest.get("metrics", {})
    path = uri.removeprefix("file://")
    return "\n".join([
        f"Hugging Face `{metrics.get('architecture', 'LlamaForCausalLM')}` checkpoint of step {metrics.get('step')} "
        f"of `{metrics.get('model')}`, at `{uri}`:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{path}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
        "```",
        "",
        f"Files: {', '.join(f'`{name}`' for name in metrics.get('files', []))}.",
    ])
