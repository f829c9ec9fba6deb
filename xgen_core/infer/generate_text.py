"""Text in, text out: tokenize a prompt as training saw documents (BOS first), generate, detokenize."""

from __future__ import annotations

import jax

from xgen_core.infer.model_artifact import compute_dtype_of, load_trained_model
from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate


def generate_text(model_uri: str, prompt: str, *, max_new_tokens: int, greedy: bool, temperature: float,
                  top_p: float, top_k: int = 0, seed: int = 0) -> dict:
    """{"prompt", "completion", "prompt_ids", "completion_ids"}; generation ends at the tokenizer's EOS
    (kept in completion_ids, left out of the completion text) or after `max_new_tokens`."""
    trained = load_trained_model(model_uri)
    special = trained.tokenizer_config
    config = SamplingConfig(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_p=top_p,
                            top_k=top_k, stop_tokens=(special["eos_id"],))
    prompt_ids = [special["bos_id"], *trained.tokenizer.encode(prompt).ids]
    spec = trained.model.spec
    [row] = generate(decoder_weights(trained.params, spec), spec, [prompt_ids], config, jax.random.key(seed),
                     compute_dtype=compute_dtype_of(trained), attention_impl=trained.model.attention_impl)
    text_ids = [token for token in row.completion_ids if token != special["eos_id"]]
    return {"prompt": prompt, "completion": trained.tokenizer.decode(text_ids), "prompt_ids": prompt_ids,
            "completion_ids": row.completion_ids}
