"""Cache against recompute on a model that pretrain() trained and checkpointed, loaded as `generate` loads it."""

import json

import jax

from tests.train.pretrain_fixtures import MICRO_MODEL, STAGE_TOKENS, STAGES, micro_runtime, micro_train, \
    synthetic_documents
from xgen_core.infer.model_artifact import load_trained_model
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate, greedy_by_recomputing
from xgen_core.tokens.shards import pack_curriculum
from xgen_core.tokens.tokenizer import save_tokenizer, tokenizer_config, train_tokenizer
from xgen_core.train.loop import pretrain


def test_greedy_with_cache_equals_recomputing_on_a_trained_model(tmp_path):
    texts = synthetic_documents(600)
    tokenizer = train_tokenizer(texts, vocab_size=320, min_frequency=2)
    config = tokenizer_config(tokenizer, 320)
    save_tokenizer(tokenizer, config, tmp_path / "tokenizer")
    stage_documents = {name: [(text, f"{name}-{j}") for j, text in enumerate(synthetic_documents(300, 100 * i))]
                       for i, name in enumerate(STAGES)}
    pack_curriculum(tokenizer, config, stage_documents, tmp_path / "pack", seq_len=32, heldout_fraction=0.1,
                    rows_per_shard=64)
    out = tmp_path / "pretrain"
    pretrain(str(tmp_path / "pack"), str(out), MICRO_MODEL, micro_train(), micro_runtime(), STAGE_TOKENS,
             vocab_size=320, log=lambda message: None)
    manifest = {"stage": "pretrain", "uri": str(out),
                "config": {"model": MICRO_MODEL.model_dump(), "train": micro_train().model_dump()},
                "inputs": {"tokenizer": str(tmp_path / "tokenizer"), "pack": str(tmp_path / "pack")}}
    (out / "manifest.json").write_text(json.dumps(manifest))

    trained = load_trained_model(str(out))
    assert trained.step == 24  # 3,072 curriculum tokens / (4 rows x 32 tokens)
    prompts = [[config["bos_id"], *tokenizer.encode(text[:length]).ids]
               for text, length in zip(texts[::97], (5, 12, 20, 9, 30, 16))]
    spec = trained.model.spec
    cached = generate(decoder_weights(trained.params, spec), spec, prompts,
                      SamplingConfig(max_new_tokens=20, greedy=True), jax.random.key(0),
                      compute_dtype=trained.model.compute_dtype, attention_impl="xla")
    recomputed = greedy_by_recomputing(trained.model, trained.params, prompts, 20, length_bucket=8)
    assert [row.completion_ids for row in cached] == recomputed
    # Trained: the completions are the corpus's tokens, not the untrained embedding rows above the tokenizer.
    assert all(token < tokenizer.get_vocab_size() for ids in recomputed for token in ids)
