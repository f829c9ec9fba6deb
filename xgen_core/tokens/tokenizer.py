"""Byte-level BPE tokenizer trained with Hugging Face `tokenizers`, saved with its own config."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xgen_core.errors import XgenError

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
# Chat turns (ChatML style) and reasoning spans that post-training formats its data with.
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")
# Order fixes the ids: pad is 0, so a zero-filled buffer is padding.
SPECIAL_TOKENS = (PAD, BOS, EOS, *CHAT_TOKENS)

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


def minimum_vocab_size() -> int:
    """The byte alphabet plus the special tokens: the smallest vocabulary a byte-level BPE can have."""
    return len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Byte-level BPE: every byte is in the base alphabet, so no text is ever out of vocabulary."""
    minimum = minimum_vocab_size()
    if vocab_size < minimum:
        raise XgenError(f"tokenizer vocab_size {vocab_size} is below the byte alphabet plus special tokens ({minimum})")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def tokenizer_config(tokenizer: Tokenizer, requested_vocab_size: int) -> dict:
    special_ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    return {
        "type": "byte-level-bpe",
        "vocab_size": tokenizer.get_vocab_size(),
        "requested_vocab_size": requested_vocab_size,
        "pad_token": PAD, "bos_token": BOS, "eos_token": EOS,
        "pad_id": special_ids[PAD], "bos_id": special_ids[BOS], "eos_id": special_ids[EOS],
        "special_tokens": special_ids,
        "chat_tokens": list(CHAT_TOKENS),
    }


def save_tokenizer(tokenizer: Tokenizer, config: dict, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def load_tokenizer(uri: str | Path) -> tuple[Tokenizer, dict]:
    """The tokenizer saved in `uri` (local path, file:// or gs://), read straight from the store."""
    from xgen_core.storage import join, normalize_uri, store_for

    uri = normalize_uri(str(uri))
    store = store_for(uri)
    if not store.exists(join(uri, TOKENIZER_FILE)):
        raise XgenError(f"no {TOKENIZER_FILE} in {uri}: run the tokenizer stage first")
    config = json.loads(store.read_text(join(uri, CONFIG_FILE)))
    return Tokenizer.from_str(store.read_text(join(uri, TOKENIZER_FILE))), config


def run(ctx) -> dict:
    """The `tokenizer` stage: BPE trained on the curriculum's training documents (held-out clusters excluded)."""
    import itertools

    from xgen_core.localize import writable_directory
    from xgen_core.tokens.corpus import curriculum_sources, iter_stage_clustered, training_texts

    settings = ctx.cfg.tokenizer
    sources = curriculum_sources(ctx.inputs["mixture"], list(ctx.cfg.curriculum())).values()
    documents = itertools.chain.from_iterable(iter_stage_clustered(uri, expand_repeats=False) for uri in sources)
    texts = training_texts(documents, ctx.cfg.pack.heldout_fraction)
    if settings.max_documents:
        texts = itertools.islice(texts, settings.max_documents)
    counter = {"documents": 0}

    def counted(stream):
        for text in stream:
            counter["documents"] += 1
            yield text

    tokenizer = train_tokenizer(counted(texts), settings.vocab_size, settings.min_frequency)
    config = tokenizer_config(tokenizer, settings.vocab_size)
    with writable_directory(ctx.output) as directory:
        save_tokenizer(tokenizer, config, directory)
    ctx.log(f"trained a {config['vocab_size']}-token byte-level BPE on {counter['documents']} documents")
    return {"counts": {"documents": counter["documents"], "vocab_size": config["vocab_size"]}}
