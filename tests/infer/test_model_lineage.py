"""A model trained at an extended length keeps its RoPE base and maximum length wherever it is loaded."""

import json

from xgen_core import artifacts
from xgen_core.infer.model_artifact import _position_overrides


def write_manifest(folder, stage: str, config: dict, inputs: dict) -> str:
    folder.mkdir(parents=True)
    (folder / artifacts.MANIFEST).write_text(json.dumps({"stage": stage, "config": config, "inputs": inputs}))
    return str(folder)


def test_stages_trained_after_an_extension_inherit_its_rope_base(tmp_path):
    model = {"model": {"preset": "micro"}, "train": {}}
    tokenizer = write_manifest(tmp_path / "tokenizer", "tokenizer", {"tokenizer": {}}, {})
    pretrain = write_manifest(tmp_path / "pretrain", "pretrain", model, {"tokenizer": tokenizer})
    extended = write_manifest(tmp_path / "extend", "extend_128k",
                              {**model, "extend_128k": {"rope_theta": 1.28e8, "max_seq_len": 8192}},
                              {"tokenizer": tokenizer, "extend_32k": pretrain})
    sft = write_manifest(tmp_path / "sft", "sft", {**model, "sft": {"seq_len": 256}}, {"extend_128k": extended})
    dpo = write_manifest(tmp_path / "dpo", "dpo", {**model, "dpo": {}}, {"sft": sft})

    def overrides(uri):
        return _position_overrides(artifacts.read_manifest(uri))

    assert overrides(pretrain) == {}
    assert overrides(extended) == overrides(sft) == overrides(dpo) == {"rope_theta": 1.28e8, "max_seq_len": 8192}
