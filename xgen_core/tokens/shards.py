"""Tokenize each curriculum stage's documents and pack them into train and held-out token shards.

Output directory (local, file:// or gs://; shards are written straight to it):
    stages.json                       seq_len, vocab size, BOS/EOS/pad ids, and per stage: name, train_dir,
                                      heldout_dir, counts (rows, shards, tokens, rows of each shard)
    unigram_counts.npy                int64 (vocab,) training-token counts over all stages (loss baseline)
    <stage>/train/tokens-*.npy, <stage>/heldout/tokens-*.npy
A document is held out when a hash of its dedup cluster id says so: every near-duplicate variant of a cluster
sits on the same side, and a cluster that appears in several stages is held out in all of them.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Tokenizer

from xgen_core.storage import join, normalize_uri, store_for
from xgen_core.tokens.corpus import is_heldout_cluster
from xgen_core.tokens.packing import RowPacker, ShardWriter, with_boundaries

ENCODE_BATCH_DOCS = 256
STAGES_FILE = "stages.json"
UNIGRAM_FILE = "unigram_counts.npy"


def encode_documents(tokenizer: Tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Token ids per document, encoded in batches (the Rust tokenizer parallelises a batch). A special token's
    text inside a document ("<|bos|>") is encoded as plain text: only packing puts BOS, EOS and pad ids in rows."""
    tokenizer.encode_special_tokens = True
    try:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == ENCODE_BATCH_DOCS:
                yield from (encoding.ids for encoding in tokenizer.encode_batch(batch, add_special_tokens=False))
                batch = []
        if batch:
            yield from (encoding.ids for encoding in tokenizer.encode_batch(batch, add_special_tokens=False))
    finally:
        tokenizer.encode_special_tokens = False


def split_heldout(documents: Iterable[tuple[str, str]], heldout_fraction: float) -> Iterator[tuple[str, bool]]:
    """(text, held out?) for (text, cluster id) documents; a held-out text only once (a mixture's repeats
    upsample training data, not the evaluation)."""
    heldout_seen: set[bytes] = set()
    for text, cluster in documents:
        if not is_heldout_cluster(cluster, heldout_fraction):
            yield text, False
            continue
        digest = hashlib.sha1(text.encode("utf-8")).digest()
        if digest not in heldout_seen:
            heldout_seen.add(digest)
            yield text, True


def pack_stage(tokenizer: Tokenizer, special_ids: dict, documents: Iterable[tuple[str, str]], stage_uri: str,
               seq_len: int, heldout_fraction: float, rows_per_shard: int, unigram_counts: np.ndarray,
               whole_documents: bool = False) -> dict:
    """Pack one stage into `stage_uri/train` and `stage_uri/heldout` in one pass; adds its train tokens to the
    counts."""
    bos, eos, pad = special_ids["bos_id"], special_ids["eos_id"], special_ids["pad_id"]
    splits = {False: "train", True: "heldout"}
    writers = {held: ShardWriter(join(stage_uri, name), rows_per_shard, pad) for held, name in splits.items()}
    packers = {held: RowPacker(seq_len + 1, pad, whole_documents) for held in splits}
    heldout_documents = 0

    def write(held: bool, rows: Iterator[np.ndarray]) -> None:
        for row in rows:
            if not held:
                real = row[row != pad].astype(np.int64)
                np.add(unigram_counts, np.bincount(real, minlength=len(unigram_counts)), out=unigram_counts)
            writers[held].add(row)

    routed = split_heldout(documents, heldout_fraction)
    flags: collections.deque[bool] = collections.deque()  # the split of each text handed to the encoder

    def texts():
        for text, held in routed:
            flags.append(held)
            yield text

    for ids in encode_documents(tokenizer, texts()):
        held = flags.popleft()
        heldout_documents += held
        write(held, packers[held].add(with_boundaries(ids, bos, eos)))
    for held in splits:
        write(held, packers[held].flush())
    counts = {name: writers[held].close() for held, name in splits.items()}
    return {**counts, "heldout_documents": heldout_documents}


def pack_curriculum(tokenizer: Tokenizer, tokenizer_config: dict, stage_documents: dict[str, Iterable[tuple[str, str]]],
                    out_uri: str, seq_len: int, heldout_fraction: float, rows_per_shard: int,
                    whole_documents: bool = False) -> dict:
    """Pack every stage (in the given order) and write stages.json and the unigram counts; `whole_documents`:
    see xgen_core/tokens/packing.py."""
    out_uri = normalize_uri(str(out_uri))
    store = store_for(out_uri)
    unigram_counts = np.zeros(tokenizer_config["vocab_size"], np.int64)
    stages = []
    for name, documents in stage_documents.items():
        counts = pack_stage(tokenizer, tokenizer_config, documents, join(out_uri, name), seq_len, heldout_fraction,
                            rows_per_shard, unigram_counts, whole_documents)
        stages.append({"name": name, "train_dir": f"{name}/train", "heldout_dir": f"{name}/heldout", **counts})
    buffer = io.BytesIO()
    np.save(buffer, unigram_counts)
    store.write_bytes(join(out_uri, UNIGRAM_FILE), buffer.getvalue())
    packed = {"seq_len": seq_len, "vocab_size": tokenizer_config["vocab_size"],
              **{key: tokenizer_config[key] for key in ("bos_id", "eos_id", "pad_id")}, "stages": stages}
    store.write_text(join(out_uri, STAGES_FILE), json.dumps(packed, indent=2))
    return packed


def run(ctx) -> dict:
    """The `pack` stage: every curriculum stage's documents as packed train and held-out shards."""
    from xgen_core.tokens.corpus import curriculum_sources, iter_stage_clustered
    from xgen_core.tokens.tokenizer import load_tokenizer

    settings = ctx.cfg.pack
    tokenizer, config = load_tokenizer(ctx.inputs["tokenizer"])
    sources = curriculum_sources(ctx.inputs["mixture"], list(ctx.cfg.curriculum()))
    stage_documents = {name: iter_stage_clustered(uri) for name, uri in sources.items()}
    packed = pack_curriculum(tokenizer, config, stage_documents, ctx.output, settings.seq_len,
                             settings.heldout_fraction, settings.rows_per_shard)
    counts = {}
    for stage in packed["stages"]:
        counts[f"{stage['name']}_train_rows"] = stage["train"]["rows"]
        counts[f"{stage['name']}_train_tokens"] = stage["train"]["tokens"]
        counts[f"{stage['name']}_heldout_rows"] = stage["heldout"]["rows"]
        ctx.log(f"{stage['name']}: {stage['train']['rows']} train rows ({stage['train']['tokens']} tokens), "
                f"{stage['heldout']['rows']} held-out rows")
    return {"counts": counts}
