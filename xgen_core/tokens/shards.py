"""Tokenize each curriculum stage's documents and pack them into train and held-out shards.

Output directory:
    stages.json                       seq_len, tokenizer, and per stage: name, train_dir, heldout_dir, counts
    unigram_counts.npy                int64 (vocab,) training-token counts over all stages (loss baseline)
    <stage>/train/*.npy, <stage>/heldout/*.npy
A document is held out when a hash of its dedup cluster id says so: every near-duplicate variant of a cluster
sits on the same side, and a cluster that appears in several stages is held out in all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from xgen_core.tokens.corpus import is_heldout_cluster
from xgen_core.tokens.packing import pack_documents, write_shards

ENCODE_BATCH_DOCS = 256


def encode_documents(tokenizer: Tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Token ids per document, encoded in batches (the Rust tokenizer parallelises a batch)."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == ENCODE_BATCH_DOCS:
            yield from (encoding.ids for encoding in tokenizer.encode_batch(batch, add_special_tokens=False))
            batch = []
    if batch:
        yield from (encoding.ids for encoding in tokenizer.encode_batch(batch, add_special_tokens=False))


def split_heldout(documents: Iterable[tuple[str, str]], heldout_fraction: float,
                  heldout: dict[str, list[str]]) -> Iterator[str]:
    """Yield the training texts of (text, cluster id) documents; collect held-out ones by cluster in `heldout`
    (each text once: a mixture's repeats upsample training data, not the evaluation)."""
    for text, cluster in documents:
        if not is_heldout_cluster(cluster, heldout_fraction):
            yield text
        elif text not in heldout.setdefault(cluster, []):
            heldout[cluster].append(text)


def pack_stage(tokenizer: Tokenizer, special_ids: dict, documents: Iterable[tuple[str, str]], stage_dir: Path,
               seq_len: int,
               heldout_fraction: float, rows_per_shard: int, unigram_counts: np.ndarray) -> dict:
    """Pack one stage into `stage_dir/train` and `stage_dir/heldout`; adds its train tokens to the counts."""
    ids = dict(bos_id=special_ids["bos_id"], eos_id=special_ids["eos_id"], pad_id=special_ids["pad_id"])
    heldout_clusters: dict[str, list[str]] = {}

    def counted(rows):
        for row in rows:
            real_tokens = row["tokens"][row["segment_ids"] > 0]
            np.add(unigram_counts, np.bincount(real_tokens, minlength=len(unigram_counts)), out=unigram_counts)
            yield row

    train_texts = split_heldout(documents, heldout_fraction, heldout_clusters)
    train_rows = counted(pack_documents(encode_documents(tokenizer, train_texts), seq_len, **ids))
    train = write_shards(train_rows, stage_dir / "train", rows_per_shard)
    heldout_texts = [text for texts in heldout_clusters.values() for text in texts]
    heldout_rows = pack_documents(encode_documents(tokenizer, heldout_texts), seq_len, **ids)
    heldout = write_shards(heldout_rows, stage_dir / "heldout", rows_per_shard)
    return {"train": train, "heldout": heldout, "heldout_documents": len(heldout_texts),
            "heldout_clusters": len(heldout_clusters)}


def pack_curriculum(tokenizer: Tokenizer, tokenizer_config: dict, stage_documents: dict[str, Iterable[tuple[str, str]]],
                    out_dir: str | Path, seq_len: int, heldout_fraction: float, rows_per_shard: int) -> dict:
    """Pack every stage (in the given order) and write stages.json and the unigram counts."""
    out_dir = Path(out_dir)
    unigram_counts = np.zeros(tokenizer_config["vocab_size"], np.int64)
    stages = []
    for name, documents in stage_documents.items():
        counts = pack_stage(tokenizer, tokenizer_config, documents, out_dir / name, seq_len, heldout_fraction,
                            rows_per_shard, unigram_counts)
        stages.append({"name": name, "train_dir": f"{name}/train", "heldout_dir": f"{name}/heldout", **counts})
    np.save(out_dir / "unigram_counts.npy", unigram_counts)
    packed = {"seq_len": seq_len, "vocab_size": tokenizer_config["vocab_size"], "stages": stages}
    (out_dir / "stages.json").write_text(json.dumps(packed, indent=2))
    return packed


def run(ctx) -> dict:
    """The `pack` stage: every curriculum stage's documents as packed train and held-out shards."""
    from xgen_core.localize import local_directory, writable_directory
    from xgen_core.tokens.corpus import curriculum_sources, iter_stage_clustered
    from xgen_core.tokens.tokenizer import load_tokenizer

    settings = ctx.cfg.pack
    tokenizer, config = load_tokenizer(local_directory(ctx.inputs["tokenizer"]))
    sources = curriculum_sources(ctx.inputs["mixture"], list(ctx.cfg.curriculum()))
    stage_documents = {name: iter_stage_clustered(uri) for name, uri in sources.items()}
    with writable_directory(ctx.output) as directory:
        packed = pack_curriculum(tokenizer, config, stage_documents, directory, settings.seq_len,
                                 settings.heldout_fraction, settings.rows_per_shard)
    counts = {}
    for stage in packed["stages"]:
        counts[f"{stage['name']}_train_rows"] = stage["train"]["rows"]
        counts[f"{stage['name']}_train_tokens"] = stage["train"]["tokens"]
        counts[f"{stage['name']}_heldout_rows"] = stage["heldout"]["rows"]
        ctx.log(f"{stage['name']}: {stage['train']['rows']} train rows ({stage['train']['tokens']} tokens), "
                f"{stage['heldout']['rows']} held-out rows")
    return {"counts": counts}
