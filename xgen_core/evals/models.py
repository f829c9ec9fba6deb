"""What the eval stages share about the models they evaluate: which artifacts, their labels, batched greedy
completion of text prompts, and the corpus documents a model was trained from."""

from __future__ import annotations

import dataclasses
from typing import Iterator

from xgen_core import artifacts
from xgen_core.errors import XgenError
from xgen_core.storage import join, store_for


def model_uris(ctx) -> list[str]:
    """The model artifacts a stage evaluates: its external inputs (`--model URI`, config `<stage>.models`) when
    given, else every upstream (the stage table lists the model stages an eval stage reads, in order)."""
    uris = list(ctx.external_inputs) or list(ctx.inputs.values())
    if not uris:
        raise XgenError(f"{ctx.name}: no model to evaluate: give --model URI or run its upstream training stage")
    return uris


def model_label(uri: str) -> str:
    """`stage-version` of a model artifact: the name results and tables use for it."""
    manifest = artifacts.read_manifest(uri)
    return f"{manifest.get('stage', 'model')}-{manifest.get('version', '?')}"


@dataclasses.dataclass
class TextModel:
    """A trained model that completes text prompts greedily (BOS first, EOS stops), batch by batch."""

    trained: object  # xgen_core.infer.model_artifact.TrainedModel
    batch_size: int

    @classmethod
    def load(cls, uri: str, batch_size: int, max_seq_len: int | None = None) -> "TextModel":
        from xgen_core.infer.model_artifact import load_trained_model

        return cls(load_trained_model(uri, max_seq_len), batch_size)

    @property
    def max_seq_len(self) -> int:
        return self.trained.model.spec.max_seq_len

    @property
    def step(self) -> int:
        return self.trained.step

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for a prompt: its BOS and the text's tokens."""
        return 1 + len(self.trained.tokenizer.encode(text).ids)

    def complete(self, prompts: list[str], max_new_tokens: list[int]) -> list[str]:
        """Greedy completions, each cut at EOS or after its own `max_new_tokens`."""
        import jax

        from xgen_core.infer.model_artifact import compute_dtype_of
        from xgen_core.infer.sampler import SamplingConfig, decoder_weights, generate

        trained, special = self.trained, self.trained.tokenizer_config
        spec = trained.model.spec
        weights = decoder_weights(trained.params, spec)
        ids = [[special["bos_id"], *trained.tokenizer.encode(prompt).ids] for prompt in prompts]
        completions: list[str] = [""] * len(prompts)
        for rows in self._batches(ids, max_new_tokens):
            budget = max_new_tokens[rows[0]]
            config = SamplingConfig(max_new_tokens=budget, greedy=True, stop_tokens=(special["eos_id"],))
            generated = generate(weights, spec, [ids[i] for i in rows], config, jax.random.key(0),
                                 compute_dtype=compute_dtype_of(trained), attention_impl=trained.model.attention_impl)
            for row, output in zip(rows, generated):
                tokens = output.completion_ids
                if special["eos_id"] in tokens:
                    tokens = tokens[: tokens.index(special["eos_id"])]
                completions[row] = trained.tokenizer.decode(tokens)
        return completions

    def _batches(self, ids: list[list[int]], max_new_tokens: list[int]) -> list[list[int]]:
        """Row indices per sampler call: rows of one token budget together (a prompt sized to fill the context
        with its own budget must not decode to another row's), similar prompt lengths next to each other."""
        order = sorted(range(len(ids)), key=lambda i: (max_new_tokens[i], -len(ids[i])))
        batches: list[list[int]] = []
        for index in order:
            if batches and len(batches[-1]) < self.batch_size and \
                    max_new_tokens[batches[-1][0]] == max_new_tokens[index]:
                batches[-1].append(index)
            else:
                batches.append([index])
        return batches


def _find_upstream(uri: str, stage: str, depth: int = 6) -> tuple[str, dict] | None:
    """The artifact of `stage` among `uri`'s inputs, their inputs, and so on."""
    manifest = artifacts.read_manifest(uri)
    if manifest.get("stage") == stage:
        return uri, manifest
    if depth == 0:
        return None
    for upstream in manifest.get("inputs", {}).values():
        if store_for(upstream).exists(join(upstream, artifacts.MANIFEST)):
            found = _find_upstream(upstream, stage, depth - 1)
            if found:
                return found
    return None


def training_documents(model_uri: str, limit: int, documents_uri: str = "") -> list[str]:
    """Up to `limit` distinct documents for haystacks and reading questions: those at `documents_uri` (JSONL or
    Parquet with a `text` column) when given, else the held-out side of the corpus the model was packed from
    (the mixture's documents whose dedup cluster the pack stage held out), in the corpus' fixed order."""
    from xgen_core.tokens.corpus import is_heldout_cluster, iter_stage_clustered, iter_stage_documents

    def first_distinct(texts: Iterator[str]) -> list[str]:
        seen: dict[str, None] = {}
        for text in texts:
            seen.setdefault(text, None)
            if len(seen) >= limit:
                break
        return list(seen)

    if documents_uri:
        return first_distinct(iter_stage_documents(documents_uri, expand_repeats=False))
    found = _find_upstream(model_uri, "pack")
    if not found:
        raise XgenError(f"{model_uri} was not packed by this pipeline (no pack artifact among its inputs): "
                        "give the documents to read with the stage's `documents` config key")
    pack_uri, pack = found
    mixture_uri = pack["inputs"]["mixture"]
    fraction = pack["config"]["pack"]["heldout_fraction"]
    documents = iter_stage_clustered(join(mixture_uri, "stages"), expand_repeats=False)
    return first_distinct(text for text, cluster in documents if is_heldout_cluster(cluster, fraction))
