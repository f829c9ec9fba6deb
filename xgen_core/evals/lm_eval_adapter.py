"""An lm-evaluation-harness model over our checkpoints, registered as "xgen": once this module is imported,
`lm_eval.simple_evaluate(model="xgen", model_args={"model": URI}, tasks=[...])` evaluates the trained model of a
pretrain (or later training stage) artifact on any lm-eval task whose data is reachable.

- loglikelihood: lm-eval's TemplateLM splits (context, continuation) into tokens; here every row runs through the
  training forward (`Decoder.apply`) and the continuation's log-probabilities are summed in float32. Rows are
  right-padded into (batch, length) buckets with segment id 0 on padding, so padding is never attended to.
- loglikelihood_rolling: lm-eval's disjoint rolling windows over the model's context, each scored as above.
- generate_until: the KV-cache sampler (greedy unless the task asks to sample), cut at the task's stop strings.

Documents start with BOS as in training: contexts are encoded with BOS first, and BOS is the prefix an empty
context (or a rolling window's first token) is conditioned on.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from xgen_core.errors import XgenError

LENGTH_BUCKET = 32  # row lengths round up to a multiple of this: one compiled forward per (batch, length) bucket


@register_model("xgen")
class XgenLM(TemplateLM):
    def __init__(self, model: str, batch_size: int | str = 8, max_batch_size: int | None = None,
                 device: str | None = None, max_gen_toks: int = 256, seed: int = 0, **unused):
        super().__init__()
        if unused:
            raise XgenError(f"lm-eval model xgen: unknown arguments {sorted(unused)}; it takes model, batch_size, "
                            "max_gen_toks, seed")
        if device is not None:
            raise XgenError(f"lm-eval model xgen runs on JAX's default backend (set JAX_PLATFORMS); got device={device}")
        if not (isinstance(batch_size, int) or str(batch_size).isdigit()) or int(batch_size) < 1:
            raise XgenError(f"lm-eval model xgen: batch_size must be a positive integer, got {batch_size!r}")
        from xgen_core.infer.model_artifact import load_trained_model

        self.trained = load_trained_model(model)
        self.batch_size = int(batch_size)
        self.max_gen_toks = max_gen_toks
        self.max_length = self.trained.model.spec.max_seq_len
        self._special = self.trained.tokenizer_config
        self._key = jax.random.key(seed)
        self._calls = 0
        self._token_scores = jax.jit(functools.partial(_token_scores, self.trained.model))

    @property
    def eot_token_id(self) -> int:
        return self._special["eos_id"]

    @property
    def prefix_token_id(self) -> int:
        return self._special["bos_id"]

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.trained.tokenizer.encode(string).ids
        return ids if add_special_tokens is False else [self.prefix_token_id, *ids]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.trained.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation), context_ids, continuation_ids) -> (log-prob, is greedy) each."""
        results = self.score_continuations([(context_ids, continuation_ids)
                                            for _, context_ids, continuation_ids in requests])
        for (pair, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def score_continuations(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of the continuation tokens' log-probabilities given the context (cut from the left to fit the
        model's context), and whether greedy decoding would have produced every one of them."""
        rows = []
        for context_ids, continuation_ids in pairs:
            if not continuation_ids:
                raise XgenError("loglikelihood: an empty continuation has nothing to score")
            if len(continuation_ids) > self.max_length:
                raise XgenError(f"loglikelihood: a continuation of {len(continuation_ids)} tokens does not fit the "
                                f"model's {self.max_length}-token context")
            if not context_ids:
                raise XgenError("loglikelihood: a continuation needs at least one context token (BOS)")
            whole = [*context_ids, *continuation_ids]
            rows.append((whole[:-1][-self.max_length:], whole[1:][-self.max_length:], len(continuation_ids)))
        order = sorted(range(len(rows)), key=lambda index: -len(rows[index][0]))  # similar lengths share a batch
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            for index, result in zip(chosen, self._score_batch([rows[index] for index in chosen])):
                results[index] = result
        return results

    def _score_batch(self, rows) -> list[tuple[float, bool]]:
        batch = 1 << (len(rows) - 1).bit_length()
        length = min(-(-max(len(inputs) for inputs, _, _ in rows) // LENGTH_BUCKET) * LENGTH_BUCKET, self.max_length)
        tokens, targets, segments = (np.zeros((batch, length), np.int32) for _ in range(3))
        for row, (inputs, row_targets, _) in enumerate(rows):
            tokens[row, :len(inputs)], targets[row, :len(inputs)], segments[row, :len(inputs)] = \
                inputs, row_targets, 1
        positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
        logprobs, greedy = self._token_scores(self.trained.params, tokens, positions, segments, targets)
        logprobs, greedy = np.asarray(logprobs), np.asarray(greedy)
        scored = []
        for row, (inputs, _, n_scored) in enumerate(rows):
            span = slice(len(inputs) - n_scored, len(inputs))
            scored.append((float(logprobs[row, span].sum()), bool(greedy[row, span].all())))
        return scored

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for index, (string,) in enumerate(request.args for request in requests):
            for window in get_rolling_token_windows(self.tok_encode(string, add_special_tokens=False),
                                                    self.prefix_token_id, self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self.score_continuations(windows)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        results = [""] * len(requests)
        for indices in groups.values():
            contexts = [requests[index].args[0] for index in indices]
            for index, text in zip(indices, self._generate_group(contexts, requests[indices[0]].args[1])):
                results[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results

    def _generate_group(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        from xgen_core.infer.model_artifact import compute_dtype_of
        from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate

        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id]) or None)
        max_gen_toks, do_sample = kwargs.pop("max_gen_toks"), kwargs.pop("do_sample", False)
        temperature, top_p, top_k = kwargs.pop("temperature", 0.0), kwargs.pop("top_p", 1.0), kwargs.pop("top_k", 0)
        if kwargs:
            raise XgenError(f"generate_until: generation arguments the xgen sampler does not take: {sorted(kwargs)}")
        if max_gen_toks >= self.max_length:
            raise XgenError(f"generate_until: max_gen_toks {max_gen_toks} leaves no room for a context in the "
                            f"model's {self.max_length}-token window")
        greedy = not do_sample or not temperature
        config = SamplingConfig(max_new_tokens=max_gen_toks, greedy=greedy, temperature=temperature or 1.0,
                                top_p=top_p or 1.0, top_k=top_k or 0, stop_tokens=(self.eot_token_id,))
        prompts = [self.tok_encode(context)[-(self.max_length - max_gen_toks):] for context in contexts]
        spec = self.trained.model.spec
        weights = decoder_weights(self.trained.params, spec)
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            self._calls += 1
            generations = generate(weights, spec, prompts[start:start + self.batch_size], config,
                                   jax.random.fold_in(self._key, self._calls), compute_dtype=compute_dtype_of(self.trained),
                                   attention_impl=self.trained.model.attention_impl)
            for generation in generations:
                ids = [token for token in generation.completion_ids if token != self.eot_token_id]
                texts.append(postprocess_generated_text(self.tok_decode(ids), until, None))
        return texts


def _token_scores(model, params, tokens, positions, segments, targets):
    """Per position: log-probability of the target under the training forward, and whether it is the argmax."""
    logits = model.apply({"params": params}, tokens, positions, segments)
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logprobs = jnp.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0]
    return target_logprobs, jnp.argmax(logits, axis=-1) == targets
