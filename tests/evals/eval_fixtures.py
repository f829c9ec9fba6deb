"""A trained-model artifact for the eval tests, shaped as the pipeline writes it: pretrain (manifest + Orbax
checkpoint of a random tiny decoder) <- tokenizer, pack <- mixture (documents with dedup cluster ids)."""

import json

import optax
import pyarrow as pa
import pyarrow.parquet as pq

from xgen_core.config import load_config
from xgen_core.evals import ruler_tasks
from xgen_core.tokens.corpus import is_heldout_cluster
from xgen_core.tokens.tokenizer import save_tokenizer, tokenizer_config, train_tokenizer
from xgen_core.train import mesh as mesh_lib
from xgen_core.train.checkpoint import Checkpointer
from xgen_core.train.loop import build_model
from xgen_core.train.optimizer import make_optimizer
from xgen_core.train.step import init_state, state_shardings

HELDOUT_FRACTION = 0.5
VOCAB = 1024
SUBJECTS = ["river", "mountain", "library", "garden", "harbour", "market", "castle", "forest", "valley", "bridge"]


def corpus_documents(count: int = 40) -> list[str]:
    """Prose documents with varied words, several sentences each."""
    docs = []
    for i in range(count):
        subject, other = SUBJECTS[i % len(SUBJECTS)], SUBJECTS[(i * 3 + 1) % len(SUBJECTS)]
        docs.append(
            f"The old {subject} near town number {i} was quiet in winter. Travellers crossed the {other} before "
            f"sunrise and rested beside the {subject}. Merchants counted {i * 7} lanterns, {i + 3} barrels and "
            f"many baskets of apples. Children remembered the festival of {subject}s every autumn! Later the "
            f"council wrote letters about the {other} and its curious history."
        )
    return docs


def tokenizer_texts() -> list[str]:
    """What the test tokenizer learns from: the documents, RULER's templates and haystack words."""
    templates = [template + prefix for template, prefix, _ in ruler_tasks.FAMILIES.values()]
    return corpus_documents() + templates * 20 + [ruler_tasks.NOISE] * 50 + [
        f"One of the special magic numbers for key is: {n}." for n in range(1000, 1400)]


def write_model_artifact(root, preset: str = "tiny"):
    """(pretrain artifact URI, tokenizer) under `root`, with the mixture and pack artifacts it came from."""
    mixture = root / "mixture-m1"
    (mixture / "stages" / "stage1").mkdir(parents=True)
    docs = corpus_documents()
    pq.write_table(pa.table({"text": docs, "cluster_id": [f"c{i}" for i in range(len(docs))]}),
                   mixture / "stages" / "stage1" / "part-00000.parquet")
    assert sum(is_heldout_cluster(f"c{i}", HELDOUT_FRACTION) for i in range(len(docs))) >= 4
    _manifest(mixture, "mixture", "m1", {}, {})
    tokenizer_dir = root / "tokenizer-t1"
    tokenizer = train_tokenizer(tokenizer_texts(), vocab_size=VOCAB, min_frequency=2)
    save_tokenizer(tokenizer, tokenizer_config(tokenizer, VOCAB), tokenizer_dir)
    _manifest(tokenizer_dir, "tokenizer", "t1", {}, {})
    pack = root / "pack-p1"
    pack.mkdir()
    _manifest(pack, "pack", "p1", {"pack": {"heldout_fraction": HELDOUT_FRACTION}},
              {"mixture": str(mixture), "tokenizer": str(tokenizer_dir)})
    cfg = load_config("tiny", [f"model.preset={preset}", f"tokenizer.vocab_size={VOCAB}"])
    model = build_model(cfg.model, tokenizer.get_vocab_size())
    tx = make_optimizer(optax.constant_schedule(1e-3), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    mesh = mesh_lib.make_mesh(1, -1, 1)
    out = root / "pretrain-abc"
    checkpointer = Checkpointer(str(out / "checkpoints"), keep=1, asynchronous=False)
    checkpointer.save(3, init_state(model, tx, mesh, state_shardings(model, tx, mesh), 0), {"position": 0},
                      {"process_count": 1})
    checkpointer.close()
    _manifest(out, "pretrain", "abc", {"model": cfg.section_dump("model"), "train": cfg.section_dump("train")},
              {"tokenizer": str(tokenizer_dir), "pack": str(pack)})
    return str(out), tokenizer


def _manifest(folder, stage, version, config, inputs):
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"stage": stage, "version": version, "uri": str(folder), "config": config, "inputs": inputs}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "_SUCCESS").write_text("{}")
