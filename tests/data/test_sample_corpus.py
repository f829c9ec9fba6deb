"""The sample corpus is deterministic, multi-domain and has near-duplicates across snapshots and domains."""

from __future__ import annotations

from collections import Counter

from xgen_core.config import load_config
from xgen_core.data.sample_corpus import build_corpus, wet_bytes
from tests.conftest import SMALL_CORPUS


def small_cfg(*extra):
    return load_config("tiny", SMALL_CORPUS + list(extra)).sample_corpus


def test_same_seed_same_corpus_other_seed_other_corpus():
    first, second = build_corpus(small_cfg()), build_corpus(small_cfg())
    assert first == second
    assert wet_bytes(first[:5], "CC-MAIN-2024-10") == wet_bytes(second[:5], "CC-MAIN-2024-10")
    assert build_corpus(small_cfg("sample_corpus.seed=5")) != first


def test_every_sub_source_and_snapshot_is_present():
    cfg = small_cfg()
    docs = build_corpus(cfg)
    assert set(Counter(d.source for d in docs)) == {"code", "prose", "math", "web"}
    assert {d.snapshot for d in docs} == set(cfg.snapshots)
    assert all(d.url.startswith("https://") and d.crawl_time.endswith("Z") for d in docs)
    assert len({d.id for d in docs}) == len(docs)


def test_near_duplicates_are_mirrors_wrapped_copies_and_light_edits():
    docs = build_corpus(load_config("tiny").sample_corpus)
    by_text = Counter(d.text for d in docs)
    mirrored = [text for text, n in by_text.items() if n > 1]
    assert mirrored, "exact mirrors exist"
    mirror_docs = [d for d in docs if d.text == mirrored[0]]
    assert len({d.url.split("/")[2] for d in mirror_docs}) == len(mirror_docs)  # each copy on another host
    originals = {d.text for d in docs}
    wrapped = [d for d in docs if any(o in d.text and o != d.text for o in list(originals)[:400])]
    assert wrapped, "boilerplate-wrapped copies contain an original document"
