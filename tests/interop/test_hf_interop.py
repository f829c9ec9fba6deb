"""Hugging Face interop against transformers' own LlamaForCausalLM (CPU torch, float32): logits after import
and after export, greedy generation of an exported trained model, and training resumed from an import."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # a dev dependency (the CPU build, pyproject [dependency-groups]); `make env` installs it
import transformers

from tests.train.pretrain_fixtures import micro_runtime, micro_train, synthetic_documents
from xgen_core import artifacts
from xgen_core.cli import main
from xgen_core.config import ModelConfig, load_config
from xgen_core.errors import InputError
from xgen_core.infer.model_artifact import load_trained_model
from xgen_core.interop.export_hf import export_model, write_safetensors
from xgen_core.interop.import_hf import import_hf
from xgen_core.tokens.shards import pack_curriculum
from xgen_core.tokens.tokenizer import save_tokenizer, tokenizer_config, train_tokenizer
from xgen_core.train.loop import build_model, pretrain

# The tiny profile's curriculum stage names, so `xgen train pretrain` with that profile reads the test pack.
CURRICULUM = ("stage1_pl_heavy", "stage2_diverse", "stage3_quality", "stage4_anneal")
STAGE_TOKENS = dict(zip(CURRICULUM, (512, 1024, 1024, 512)))
F32 = ["model.compute_dtype=float32"]
PROMPTS = ["def add_3_", "Question: what is 4 plus", "def add_1"]


def commit(directory, stage: str, **fields) -> None:
    """Make `directory` a committed artifact of `stage` (what the stage runner leaves)."""
    artifacts.commit_in_place(str(directory), {"stage": stage, "version": stage, "uri": str(directory), **fields})


def hf_tokenizer_files(tokenizer, special: dict, directory) -> None:
    """Our tokenizer saved by transformers itself, as a Hugging Face checkpoint's tokenizer."""
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=special["bos_token"],
                                                eos_token=special["eos_token"], pad_token=special["pad_token"])
    fast.save_pretrained(str(directory))


def our_logits(model, params, tokens: np.ndarray) -> np.ndarray:
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return np.asarray(model.apply({"params": params}, jnp.asarray(tokens), positions, jnp.ones_like(tokens)))


def hf_logits(hf_model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer = train_tokenizer(synthetic_documents(600), vocab_size=320, min_frequency=2)
    save_tokenizer(tokenizer, tokenizer_config(tokenizer, 320), directory)
    commit(directory, "tokenizer")
    return directory


@pytest.fixture(scope="module")
def tokenizer_and_config(tokenizer_dir):
    from xgen_core.tokens.tokenizer import load_tokenizer

    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer_dir, tokenizer_and_config):
    """A micro model pretrained on a small pack (float32 compute), committed as the pretrain stage leaves it."""
    root = tmp_path_factory.mktemp("trained")
    tokenizer, config = tokenizer_and_config
    stage_documents = {name: [(text, f"{name}-{j}") for j, text in enumerate(synthetic_documents(300, 100 * i))]
                       for i, name in enumerate(CURRICULUM)}
    pack_curriculum(tokenizer, config, stage_documents, root / "pack", seq_len=32, heldout_fraction=0.1,
                    rows_per_shard=64)
    commit(root / "pack", "pack")
    model_config = ModelConfig(preset="micro", attention_impl="auto", compute_dtype="float32",
                               param_dtype="float32", remat=False, scan_layers=True)
    pretrain(str(root / "pack"), str(root / "pretrain"), model_config, micro_train(),
             micro_runtime(checkpoint_every=12, eval_every=12), STAGE_TOKENS,
             vocab_size=config["vocab_size"], log=lambda message: None)
    commit(root / "pretrain", "pretrain", config={"model": model_config.model_dump(), "train": micro_train().model_dump()},
           inputs={"tokenizer": str(tokenizer_dir), "pack": str(root / "pack")})
    return root


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained model exported by `xgen model export-hf --model URI --out DIR`."""
    out = tmp_path_factory.mktemp("exports") / "hf"
    main(["model", "export-hf", "--model", str(trained / "pretrain"), "--out", str(out),
          "--root", str(trained / "root")])
    return out


def random_llama(seed: int, **shape):
    """A LlamaForCausalLM with every weight random (norm scales around 1), float32, eager attention."""
    config = transformers.LlamaConfig(**shape, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.15)
    return model


@pytest.mark.parametrize("scan_layers,tied", [(True, True), (False, False)])
def test_import_of_a_random_llama_gives_its_logits(tmp_path, tokenizer_and_config, scan_layers, tied):
    tokenizer, special = tokenizer_and_config
    # No preset has these shapes: a head size that is not d_model / heads, 3 query heads per KV head.
    hf_model = random_llama(
        seed=int(scan_layers), vocab_size=384, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=12, rope_theta=500_000.0, rms_norm_eps=1e-6,
        max_position_embeddings=64, tie_word_embeddings=tied, bos_token_id=special["bos_id"],
        eos_token_id=special["eos_id"], pad_token_id=special["pad_id"],
    )
    hf_dir = tmp_path / "hf"
    hf_model.save_pretrained(str(hf_dir))
    hf_tokenizer_files(tokenizer, special, hf_dir)

    cfg = load_config("tiny", [*F32, f"model.scan_layers={str(scan_layers).lower()}"])
    manifest = import_hf(str(hf_dir), str(tmp_path / "imported"), cfg, log=lambda message: None)
    overrides = manifest["config"]["model"]["preset_overrides"]
    assert overrides["head_dim"] == 12 and overrides["rope_theta"] == 500_000.0 and overrides["norm_eps"] == 1e-6
    imported = load_trained_model(str(tmp_path / "imported"))
    assert imported.step == 0 and imported.model.scan_layers == scan_layers
    assert imported.tokenizer_config["bos_id"] == special["bos_id"]
    assert imported.tokenizer.encode("def add_1").ids == tokenizer.encode("def add_1").ids  # no BOS added twice

    tokens = np.random.default_rng(0).integers(0, 384, size=(2, 40)).astype(np.int32)
    ours, theirs = our_logits(imported.model, imported.params, tokens), hf_logits(hf_model, tokens)
    assert np.abs(theirs).max() > 1.0  # logits that say something, so the difference below is a real check
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=0)


@pytest.mark.parametrize("scan_layers,tied", [(True, False), (False, True)])
def test_export_of_a_random_model_gives_its_logits_in_transformers(tmp_path, tokenizer_and_config, scan_layers,
                                                                   tied):
    tokenizer, special = tokenizer_and_config
    model_config = ModelConfig(preset="micro", attention_impl="xla", compute_dtype="float32", param_dtype="float32",
                               remat=False, scan_layers=scan_layers,
                               preset_overrides={"tie_embeddings": tied, "rope_theta": 20_000.0})
    model = build_model(model_config, special["vocab_size"])
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = model.init(jax.random.key(3), tokens, tokens, tokens)["params"]
    keys = iter(jax.random.split(jax.random.key(4), 64))
    params = jax.tree_util.tree_map_with_path(  # norm scales away from 1, so a misplaced norm shows
        lambda path, leaf: leaf + 0.2 * jax.random.normal(next(keys), leaf.shape) if "norm" in jax.tree_util.keystr(path)
        else leaf, jax.tree.map(jnp.asarray, __import__("flax").linen.unbox(params)))
    export_model(model.spec, params, tokenizer, special, tmp_path / "hf")

    config = transformers.AutoConfig.from_pretrained(str(tmp_path / "hf"))
    spec = model.spec
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.intermediate_size, config.max_position_embeddings, config.rms_norm_eps,
            config.tie_word_embeddings, config.rope_parameters["rope_theta"]) == (
        spec.d_model, spec.n_layers, spec.n_q_heads, spec.n_kv_heads, spec.head_dim, spec.mlp_dim, spec.max_seq_len,
        spec.norm_eps, tied, 20_000.0)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), attn_implementation="eager")
    assert type(hf_model).__name__ == "LlamaForCausalLM" and next(hf_model.parameters()).dtype == torch.float32
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert hf_tokenizer("def add_1").input_ids == [special["bos_id"], *tokenizer.encode("def add_1").ids]

    rows = np.random.default_rng(1).integers(0, spec.vocab_size, size=(3, 50)).astype(np.int32)
    ours, theirs = our_logits(model, params, rows), hf_logits(hf_model.eval(), rows)
    assert np.abs(theirs).max() > 0.5
    np.testing.assert_allclose(theirs, ours, atol=2e-4, rtol=0)


def test_greedy_generation_in_transformers_equals_xgen_generate(exported, trained, capsys):
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    capsys.readouterr()
    for prompt in PROMPTS:
        main(["model", "generate", "--model", str(trained / "pretrain"), "--prompt", prompt, "--greedy",
              "--max-new-tokens", "24", "--json"])
        ours = json.loads(capsys.readouterr().out)
        prompt_ids = hf_tokenizer(prompt, return_tensors="pt").input_ids
        assert prompt_ids[0].tolist() == ours["prompt_ids"]
        with torch.no_grad():
            output = hf_model.generate(prompt_ids, max_new_tokens=24, do_sample=False)
        theirs = output[0, prompt_ids.shape[1]:].tolist()
        assert theirs == ours["completion_ids"], prompt
        assert hf_tokenizer.decode(theirs, skip_special_tokens=True) == ours["completion"]
        assert all(token < len(hf_tokenizer) for token in theirs)  # trained: the corpus's tokens, not unused rows


def test_export_stage_writes_the_checkpoint_in_its_artifact(exported, trained):
    manifest = artifacts.read_manifest(str(exported))
    assert manifest["stage"] == "export_hf" and manifest["inputs"] == {"grpo": str(trained / "pretrain")}
    assert manifest["counts"]["step"] == 24 and artifacts.is_committed(str(exported))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(
        manifest["metrics"]["files"])


def test_import_of_an_export_restores_the_trained_model_and_training_resumes(exported, trained, tokenizer_dir,
                                                                             tmp_path, capsys):
    imported = tmp_path / "imported"
    main(["model", "import-hf", "--from", str(exported), "--out", str(imported), *F32, "model.remat=false",
          "model.scan_layers=false"])
    printed = capsys.readouterr().out
    assert "as preset micro:" in printed and "xgen train pretrain" in printed
    original, restored = load_trained_model(str(trained / "pretrain")), load_trained_model(str(imported))
    assert restored.model.spec == original.model.spec and not restored.model.scan_layers
    for index in range(original.model.spec.n_layers):  # scanned in, unrolled out: the same numbers
        np.testing.assert_array_equal(
            restored.params[f"layer_{index}"]["attention"]["q"], original.params["layers"]["attention"]["q"][index])
    np.testing.assert_array_equal(restored.params["lm_head"], original.params["lm_head"])
    assert restored.tokenizer.to_str() == original.tokenizer.to_str()

    # Training continues from the imported step-0 checkpoint, in place, through the pretrain stage's command.
    main(["train", "pretrain", "--output", str(imported), "--input", f"tokenizer={tokenizer_dir}",
          "--input", f"pack={trained / 'pack'}", *F32, "model.preset=micro", "model.remat=false",
          "model.scan_layers=false", "train.batch_size=4", "train.grad_accum_steps=2", "train_run.max_steps=2",
          "train_run.eval_batches=2", "tokenizer.vocab_size=320",
          "mixture.stages=" + json.dumps([{"name": name, "tokens": tokens, "pl_share": 0.3, "min_quality_percentile": 0.0}
                                          for name, tokens in STAGE_TOKENS.items()])])
    resumed = [json.loads(line) for line in (imported / "metrics.jsonl").read_text().splitlines()]
    from_scratch = [json.loads(line) for line in (trained / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in resumed] == [1, 2]
    # The first step's loss is the trained model's (same first batch), far below a random model's.
    assert resumed[0]["loss"] < from_scratch[0]["loss"] - 2.0
    assert resumed[0]["loss"] < from_scratch[-1]["loss"] + 0.5
    manifest = artifacts.read_manifest(str(imported))
    assert manifest["stage"] == "pretrain" and manifest["counts"]["steps"] == 2 and not manifest["complete"]
    assert load_trained_model(str(imported)).step == 2


def test_import_refuses_what_our_decoder_does_not_compute(tmp_path, tokenizer_and_config):
    tokenizer, special = tokenizer_and_config
    shape = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, bos_token_id=special["bos_id"],
                 eos_token_id=special["eos_id"])
    cfg = load_config("tiny", F32)
    for name, changes, message in (
        ("bias", {"attention_bias": True}, "attention_bias"),
        ("scaled", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type"),
    ):
        hf_dir = tmp_path / name
        transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, **changes)).save_pretrained(str(hf_dir))
        hf_tokenizer_files(tokenizer, special, hf_dir)
        with pytest.raises(InputError, match=message):
            import_hf(str(hf_dir), str(tmp_path / f"{name}-imported"), cfg, log=lambda message: None)
        assert not (tmp_path / f"{name}-imported").exists()
    with pytest.raises(InputError, match="no config.json"):
        import_hf(str(tmp_path), str(tmp_path / "nothing"), cfg)


def test_large_checkpoints_are_written_in_shards_that_transformers_reads(tmp_path):
    tensors = {f"t{index}": np.full((4, 4), index, np.float32) for index in range(5)}
    files = write_safetensors(tensors, tmp_path, shard_bytes=3 * 64)
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"]
    from xgen_core.interop.import_hf import read_tensors

    read = read_tensors(str(tmp_path))
    assert sorted(read) == sorted(tensors) and all(np.array_equal(read[k], v) for k, v in tensors.items())
