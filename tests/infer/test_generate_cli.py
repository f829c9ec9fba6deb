"""`xgen model generate` against a pretrain-shaped artifact: manifest, Orbax checkpoints, tokenizer input."""

import json

import jax
import optax
import pytest

from xgen_core.cli import main
from xgen_core.config import load_config
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate
from xgen_core.tokens.tokenizer import load_tokenizer, save_tokenizer, tokenizer_config, train_tokenizer
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.checkpoint import Checkpointer
from xgen_core.train.loop import build_model
from xgen_core.train.optimizer import make_optimizer
from xgen_core.train.step import init_state, state_shardings

TEXTS = [f"def add_{a}_{b}(x):\n    return x + {a} + {b}\n" for a in range(30) for b in range(10)]


def write_pretrain_artifact(tmp_path, steps=(2, 5)):
    """A pretrain artifact as the stage writes it, with two checkpoints of different parameters."""
    tokenizer_dir = tmp_path / "tokenizer-abc"
    tokenizer = train_tokenizer(TEXTS, vocab_size=320, min_frequency=2)
    save_tokenizer(tokenizer, tokenizer_config(tokenizer, 320), tokenizer_dir)
    cfg = load_config("tiny", ["model.preset=micro", "model.compute_dtype=float32", "tokenizer.vocab_size=320"])
    sections = {"model": cfg.section_dump("model"), "train": cfg.section_dump("train")}
    model = build_model(cfg.model, tokenizer.get_vocab_size())
    tx = make_optimizer(optax.constant_schedule(1e-3), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    mesh = mesh_lib.make_mesh(1, -1, 1)
    shardings = state_shardings(model, tx, mesh)
    out = tmp_path / "pretrain-def"
    checkpointer = Checkpointer(str(out / "checkpoints"), keep=2, asynchronous=False)
    states = {}
    for seed, step in enumerate(steps):
        states[step] = init_state(model, tx, mesh, shardings, seed)
        checkpointer.save(step, states[step], {"position": 0}, {"process_count": 1})
    checkpointer.close()
    manifest = {"stage": "pretrain", "version": "def", "uri": str(out), "config": sections,
                "inputs": {"tokenizer": str(tokenizer_dir), "pack": str(tmp_path / "pack-xyz")}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").write_text("{}")
    return out, tokenizer_dir, model, states[steps[-1]].params


def test_generate_uses_the_latest_checkpoint_and_the_trained_tokenizer(tmp_path, capsys):
    out, tokenizer_dir, model, latest_params = write_pretrain_artifact(tmp_path)
    prompt = "def add_3_4(x):"
    main(["model", "generate", "--model", str(out), "--prompt", prompt, "--max-new-tokens", "12", "--greedy",
          "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokenizer, config = load_tokenizer(str(tokenizer_dir))
    assert result["prompt"] == prompt
    assert result["prompt_ids"] == [config["bos_id"], *tokenizer.encode(prompt).ids]
    expected = generate(decoder_weights(latest_params, model.spec), model.spec, [result["prompt_ids"]],
                        SamplingConfig(max_new_tokens=12, greedy=True, stop_tokens=(config["eos_id"],)),
                        jax.random.key(0), compute_dtype=model.compute_dtype, attention_impl="xla")
    assert result["completion_ids"] == expected[0].completion_ids
    assert 1 <= len(result["completion_ids"]) <= 12
    text_ids = [token for token in result["completion_ids"] if token != config["eos_id"]]
    assert result["completion"] == tokenizer.decode(text_ids)

    main(["model", "generate", "--model", str(out), "--prompt", prompt, "--max-new-tokens", "12", "--greedy"])
    assert capsys.readouterr().out.rstrip("\n") == result["completion"]


def test_sampled_generation_repeats_with_a_seed(tmp_path, capsys):
    out, *_ = write_pretrain_artifact(tmp_path, steps=(1,))
    command = ["model", "generate", "--model", str(out), "--prompt", "def", "--max-new-tokens", "8",
               "--temperature", "1.5", "--top-p", "0.9", "--json"]
    main([*command, "--seed", "4"])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    main([*command, "--seed", "4"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == first


def test_generate_refuses_an_artifact_that_is_not_a_trained_model(tmp_path, capsys):
    (tmp_path / "tokenizer-abc").mkdir()
    (tmp_path / "tokenizer-abc" / "manifest.json").write_text(json.dumps({"stage": "tokenizer", "config": {}}))
    with pytest.raises(SystemExit) as raised:
        main(["model", "generate", "--model", str(tmp_path / "tokenizer-abc"), "--prompt", "x"])
    assert raised.value.code != 0
    assert "not a trained model" in capsys.readouterr().err
