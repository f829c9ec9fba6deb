"""A labelled near-duplicate corpus for measuring deduplication (bench/dedup.py and the dedup tests).

Ground-truth clusters hold a base document and variants whose word-5-gram Jaccard similarity to the base is at least
`min_jaccard`: exact copies, light edits (a few words replaced, inserted or deleted) and boilerplate-wrapped copies
(navigation / cookie text before and after). Hard negatives share about a third of a base document (a contiguous
run) and are otherwise new text: each is its own cluster and must never be merged.

`generate_histories` builds the other shape real pages take: edit histories, where each version is a light edit of
an earlier one (a chain, or a tree of branches) and the far ends share too little to pass the threshold directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xgen_core.data.minhash import word_shingles

SNAPSHOTS = [f"CC-MAIN-2024-{week:02d}" for week in (10, 18, 22, 26, 30, 33, 38, 42)]
BOILERPLATE = [
    "home about contact privacy policy terms of use sitemap",
    "we use cookies to improve your experience accept all cookies manage settings",
    "skip to main content menu search subscribe to our newsletter",
    "copyright all rights reserved powered by wordpress back to top",
    "share this article on facebook twitter linkedin email print",
    "related posts previous post next post leave a comment",
]


@dataclass(frozen=True)
class NearDupDoc:
    id: str
    text: str
    url: str
    snapshot: str
    true_cluster: str
    kind: str  # base | exact | edit | wrap | negative (generate); base | revision (generate_histories)


def jaccard(left: str, right: str, ngram: int = 5) -> float:
    return shingle_jaccard(set(word_shingles(left, ngram)), set(word_shingles(right, ngram)))


def shingle_jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


class _Writer:
    def __init__(self, seed: int, vocab_size: int):
        self.rng = np.random.default_rng(seed)
        self.vocab = np.array([self._word(i) for i in range(vocab_size)])
        ranks = np.arange(1, vocab_size + 1)
        self.word_p = (1.0 / ranks) / (1.0 / ranks).sum()

    def _word(self, index: int) -> str:
        syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa", "gu", "fe", "zo", "ri", "ma", "te"]
        word, value = "", index + 17
        while value:
            word += syllables[value % 16]
            value //= 16
        return word

    def words(self, n: int) -> list[str]:
        return list(self.rng.choice(self.vocab, size=n, p=self.word_p))

    def document(self) -> str:
        return " ".join(self.words(int(self.rng.integers(60, 260))))

    def light_edit(self, text: str) -> str:
        words = text.split()
        n_edits = max(1, int(round(len(words) * 0.01)))
        for _ in range(n_edits):
            position = int(self.rng.integers(0, len(words)))
            action = self.rng.integers(0, 3)
            if action == 0:
                words[position] = self.words(1)[0]
            elif action == 1:
                words.insert(position, self.words(1)[0])
            elif len(words) > 10:
                del words[position]
        return " ".join(words)

    def revision(self, text: str, edit_share: float) -> str:
        """text with about edit_share of its words replaced, inserted or deleted (at least one), the new words
        drawn at once (light_edit draws one at a time, which the star-shaped set's seeds depend on)."""
        words = text.split()
        n_edits = max(1, int(round(len(words) * edit_share)))
        fresh = self.words(n_edits)
        positions = self.rng.integers(0, len(words), n_edits)
        actions = self.rng.integers(0, 3, n_edits)
        for position, action, word in zip(positions, actions, fresh):
            position = min(int(position), len(words) - 1)
            if action == 0:
                words[position] = word
            elif action == 1:
                words.insert(position, word)
            elif len(words) > 10:
                del words[position]
        return " ".join(words)

    def wrap(self, text: str) -> str:
        header, footer = self.rng.choice(len(BOILERPLATE), size=2, replace=False)
        return f"{BOILERPLATE[header]}\n{text}\n{BOILERPLATE[footer]}"

    def hard_negative(self, text: str) -> str:
        words = text.split()
        third = len(words) // 3
        start = int(self.rng.integers(0, len(words) - third + 1))
        shared = words[start : start + third]
        fresh = self.words(2 * third + int(self.rng.integers(0, 20)))
        cut = int(self.rng.integers(0, len(fresh) + 1))
        return " ".join(fresh[:cut] + shared + fresh[cut:])


def generate(n_docs: int, seed: int = 0, min_jaccard: float = 0.8, vocab_size: int = 20000) -> list[NearDupDoc]:
    """Exactly n_docs labelled documents; the same seed gives the same set."""
    writer = _Writer(seed, vocab_size)
    rng = writer.rng
    docs: list[NearDupDoc] = []
    cluster_index = 0

    def add(text: str, cluster: str, kind: str) -> None:
        index = len(docs)
        domain = f"site{int(rng.integers(0, 5000))}.example"
        snapshot = SNAPSHOTS[int(rng.integers(0, len(SNAPSHOTS)))]
        docs.append(NearDupDoc(f"doc-{index:07d}", text, f"https://{domain}/page/{index}", snapshot, cluster, kind))

    while len(docs) < n_docs:
        cluster = f"c{cluster_index:07d}"
        cluster_index += 1
        base = writer.document()
        add(base, cluster, "base")
        roll = rng.random()
        if roll < 0.5:
            n_variants = 0
        elif roll < 0.99:
            n_variants = int(rng.geometric(0.35))
        else:
            n_variants = int(rng.integers(20, 120))
        for _ in range(min(n_variants, n_docs - len(docs))):
            kind = ("exact", "edit", "wrap")[int(rng.integers(0, 3))]
            text = variant(writer, base, kind, min_jaccard)
            add(text, cluster, kind if text != base else "exact")
        if len(docs) < n_docs and rng.random() < 0.12:
            add(writer.hard_negative(base), f"c{cluster_index:07d}-neg", "negative")
    return docs


def variant(writer: _Writer, base: str, kind: str, min_jaccard: float) -> str:
    """A variant of base of the given kind whose similarity to base reaches min_jaccard (else an exact copy)."""
    if kind == "exact":
        return base
    for _ in range(5):
        text = writer.light_edit(base) if kind == "edit" else writer.wrap(base)
        if jaccard(base, text) >= min_jaccard:
            return text
    return base


def generate_histories(
    n_docs: int,
    seed: int = 0,
    shape: str = "chain",
    edit_share: float = 0.03,
    threshold: float = 0.5,
    singleton_share: float = 0.3,
    vocab_size: int = 20000,
) -> list[NearDupDoc]:
    """Exactly n_docs labelled documents in edit histories (each history one true cluster) and singletons.

    Every new version is a light edit (`edit_share` of its words) of its parent: the previous version in a "chain",
    one of the three latest versions in a "tree". A history grows until some version's Jaccard similarity to the
    first falls below `threshold`, then by one to three times as many versions again (a page recrawled for years),
    so its far ends never pass the check directly and only the links between neighbours hold it together.
    """
    if shape not in ("chain", "tree"):
        raise ValueError(f"shape must be 'chain' or 'tree', not {shape!r}")
    writer = _Writer(seed, vocab_size)
    rng = writer.rng
    docs: list[NearDupDoc] = []
    history_index = 0
    while len(docs) < n_docs:
        cluster = f"h{history_index:07d}"
        history_index += 1
        versions = [writer.document()]
        if rng.random() >= singleton_share:
            versions = edit_history(writer, versions[0], shape, edit_share, threshold)
        for version, text in enumerate(versions[: n_docs - len(docs)]):
            index = len(docs)
            domain = f"site{int(rng.integers(0, 5000))}.example"
            snapshot = SNAPSHOTS[min(version * len(SNAPSHOTS) // len(versions), len(SNAPSHOTS) - 1)]
            kind = "base" if version == 0 else "revision"
            docs.append(NearDupDoc(f"doc-{index:07d}", text, f"https://{domain}/page/{index}", snapshot, cluster, kind))
    return docs


def edit_history(writer: _Writer, base: str, shape: str, edit_share: float, threshold: float) -> list[str]:
    """base and its successive versions (see generate_histories)."""
    versions = [base]
    base_shingles = set(word_shingles(base, 5))
    while shingle_jaccard(base_shingles, set(word_shingles(versions[-1], 5))) >= threshold:
        versions.append(writer.revision(next_parent(writer, versions, shape), edit_share))
    for _ in range(int(writer.rng.integers(len(versions), 4 * len(versions)))):
        versions.append(writer.revision(next_parent(writer, versions, shape), edit_share))
    return versions


def next_parent(writer: _Writer, versions: list[str], shape: str) -> str:
    if shape == "chain":
        return versions[-1]
    return versions[-1 - int(writer.rng.integers(0, min(3, len(versions))))]


def true_pairs_f1(predicted: dict[str, str], truth: dict[str, str]) -> dict[str, float]:
    """Pairwise precision / recall / F1 of a clustering against ground-truth clusters (ids -> cluster labels)."""
    predicted_pairs = _pair_count(predicted)
    true_pairs = _pair_count(truth)
    joint = _pair_count({doc: (predicted[doc], truth[doc]) for doc in truth})
    precision = joint / predicted_pairs if predicted_pairs else 1.0
    recall = joint / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_pairs": true_pairs, "predicted_pairs": predicted_pairs}


def _pair_count(labels: dict) -> int:
    sizes: dict = {}
    for label in labels.values():
        sizes[label] = sizes.get(label, 0) + 1
    return sum(n * (n - 1) // 2 for n in sizes.values())


def merged_hard_negatives(predicted: dict[str, str], docs: list[NearDupDoc]) -> int:
    """Hard negatives put in the same predicted cluster as any document of another true cluster."""
    members: dict[str, set[str]] = {}
    by_id = {doc.id: doc for doc in docs}
    for doc_id, cluster in predicted.items():
        members.setdefault(cluster, set()).add(by_id[doc_id].true_cluster)
    return sum(1 for doc in docs if doc.kind == "negative" and len(members[predicted[doc.id]]) > 1)
