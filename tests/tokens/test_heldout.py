"""The held-out split keeps each dedup cluster whole, and the tokenizer never reads a held-out document."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xgen_core.config import load_config
from xgen_core.tokens import tokenizer as tokenizer_module
from xgen_core.tokens.shards import run as run_pack
from xgen_core.tokens.tokenizer import load_tokenizer

CLUSTERS, VARIANTS = 60, 3
CLUSTER_NUMBER = re.compile(r"Cluster (\d+) ")


def variant_text(cluster: int, variant: int) -> str:
    """Near-duplicates: the same long text, one word changed per variant."""
    body = " ".join(f"word{(cluster * 7 + i) % 50}" for i in range(40))
    return f"Cluster {cluster} report {['alpha', 'beta', 'gamma'][variant]}: {body}."


def write_mixture(root: Path, stage_names: list[str]) -> str:
    """A mixture artifact's per-stage manifests (id, cluster_id, repeats, text), every cluster in every stage."""
    for number, name in enumerate(stage_names):
        rows = [(f"{name}-{c}-{v}", f"cluster-{c:04d}", 1 + (c + number) % 2, variant_text(c, v))
                for c in range(CLUSTERS) for v in range(VARIANTS)]
        directory = root / "stages" / name
        directory.mkdir(parents=True)
        ids, clusters, repeats, texts = zip(*rows)
        pq.write_table(pa.table({"id": ids, "cluster_id": clusters, "repeats": list(repeats), "text": texts}),
                       directory / "part-0.parquet")
    return str(root)


def clusters_in_split(pack_dir: Path, directory: str, tokenizer, pad_id: int, bos_id: int) -> set[int]:
    """Cluster numbers of the documents packed into one split (its rows concatenated rebuild the documents)."""
    files = sorted((pack_dir / directory).glob("tokens-*.npy"))
    stream = np.concatenate([np.load(f).reshape(-1) for f in files]) if files else np.zeros(0, np.int64)
    stream = stream[stream != pad_id].astype(np.int64)
    starts = np.flatnonzero(stream == bos_id)
    documents = [tokenizer.decode(piece.tolist()) for piece in np.split(stream, starts) if len(piece)]
    return {int(m.group(1)) for text in documents for m in [CLUSTER_NUMBER.search(text)] if m}


@pytest.fixture
def stage_context(tmp_path):
    cfg = load_config("tiny", ["pack.heldout_fraction=0.2", "tokenizer.vocab_size=400", "pack.seq_len=64",
                               "pack.rows_per_shard=16"])
    mixture = write_mixture(tmp_path / "mixture", list(cfg.curriculum()))

    def context(output: str, **inputs):
        return SimpleNamespace(cfg=cfg, inputs={"mixture": mixture, **inputs}, output=str(tmp_path / output),
                               log=lambda message: None)

    return context


def test_variants_of_a_cluster_never_straddle_train_and_heldout_and_the_tokenizer_sees_train_only(
        stage_context, monkeypatch):
    tokenizer_input: list[str] = []
    real_train = tokenizer_module.train_tokenizer

    def recording_train(texts, vocab_size, min_frequency):
        texts = list(texts)
        tokenizer_input.extend(texts)
        return real_train(texts, vocab_size, min_frequency)

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", recording_train)
    tokenizer_module.run(stage_context("tokenizer"))
    pack_ctx = stage_context("pack", tokenizer=stage_context("tokenizer").output)
    run_pack(pack_ctx)

    tokenizer, config = load_tokenizer(pack_ctx.inputs["tokenizer"])
    pack_dir = Path(pack_ctx.output)
    packed = json.loads((pack_dir / "stages.json").read_text())
    heldout_clusters, train_clusters = set(), set()
    for stage in packed["stages"]:
        heldout_clusters |= clusters_in_split(pack_dir, stage["heldout_dir"], tokenizer, config["pad_id"],
                                              config["bos_id"])
        train_clusters |= clusters_in_split(pack_dir, stage["train_dir"], tokenizer, config["pad_id"],
                                            config["bos_id"])
    assert heldout_clusters and train_clusters
    assert not heldout_clusters & train_clusters
    assert heldout_clusters | train_clusters == set(range(CLUSTERS))
    seen_by_tokenizer = {int(CLUSTER_NUMBER.search(text).group(1)) for text in tokenizer_input}
    assert seen_by_tokenizer == train_clusters
    heldout_texts = {variant_text(c, v) for c in heldout_clusters for v in range(VARIANTS)}
    assert not heldout_texts & set(tokenizer_input)


def test_stage_documents_without_cluster_ids_are_a_clear_error(tmp_path):
    from xgen_core.errors import XgenError
    from xgen_core.tokens.corpus import iter_stage_clustered

    pq.write_table(pa.table({"text": ["a", "b"]}), tmp_path / "part-0.parquet")
    with pytest.raises(XgenError, match="cluster_id"):
        list(iter_stage_clustered(str(tmp_path)))
