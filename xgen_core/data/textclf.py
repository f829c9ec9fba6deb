"""fastText text classifiers: trained with `fasttext.train_supervised`, saved as `.bin` files that
`fasttext.load_model` (and every fastText tool) opens, scored with fastText's own predict.

Reproducibility comes from the artifact, not from the trainer: fastText's trainer is not bit-reproducible (threads
race on the shared weights; even `thread=1` with a fixed seed gave different models across runs here). A trained
model is committed once in the quality_train artifact, recorded with its SHA-256, never trained again, and every
later stage reads that file; a model file checked against a recorded digest is exactly the one that was committed.

Documents become one fastText line each (whitespace runs, newlines included, collapsed to one space): the same
preparation for training, evaluation and scoring, and for models brought from elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xgen_core.config import NEGATIVE_LABEL, FastTextConfig
from xgen_core.errors import XgenError
from xgen_core.storage import is_gcs, normalize_uri, store_for

CACHE_DIR = Path(tempfile.gettempdir()) / "xgen-cache" / "fasttext"
_COPY_CHUNK = 8 << 20


def fasttext_line(text: str) -> str:
    return " ".join(text.split())


def train(positives: list[str], negatives: list[str], settings: FastTextConfig, positive_label: str, seed: int):
    """A fastText supervised model on the two classes (the input file fastText reads is written to a temp dir)."""
    import fasttext

    with tempfile.TemporaryDirectory(prefix="xgen-fasttext-") as folder:
        path = Path(folder) / "train.txt"
        lines = [f"{positive_label} {fasttext_line(t)}" for t in positives]
        lines += [f"{NEGATIVE_LABEL} {fasttext_line(t)}" for t in negatives]
        order = np.random.default_rng(seed).permutation(len(lines))  # fastText reads the file in order
        path.write_text("".join(lines[i] + "\n" for i in order), encoding="utf-8")
        try:
            return fasttext.train_supervised(input=str(path), seed=seed, verbose=0, **settings.model_dump())
        except RuntimeError as exc:
            raise XgenError(f"fastText training failed ({exc}): lower quality_train.fasttext.lr "
                            f"(now {settings.lr})") from None  # fmt: skip


def scores(model, texts: list[str], positive_label: str) -> np.ndarray:
    """Probability of `positive_label` for each text (fastText's multi-line predict over all labels)."""
    if not texts:
        return np.empty(0, dtype=np.float64)
    labels, probabilities = model.predict([fasttext_line(t) for t in texts], k=-1)
    return np.array([_probability_of(positive_label, l, p) for l, p in zip(labels, probabilities)], dtype=np.float64)


def _probability_of(label: str, labels, probabilities) -> float:
    for name, probability in zip(labels, probabilities):
        if name == label:
            return min(1.0, float(probability))  # fastText's softmax adds 1e-5 before normalising
    return 0.0


def evaluate(model, positives: list[str], negatives: list[str], positive_label: str) -> dict:
    """Held-out accuracy, precision and recall of the positive class at a 0.5 cut."""
    predicted = scores(model, positives + negatives, positive_label) >= 0.5
    truth = np.array([True] * len(positives) + [False] * len(negatives), dtype=bool)
    true_positive = int((predicted & truth).sum())
    return {
        "accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
        "precision": true_positive / max(1, int(predicted.sum())),
        "recall": true_positive / max(1, int(truth.sum())),
        "n": int(len(truth)),
    }


def check_labels(model, positive_label: str, where: str) -> None:
    if positive_label not in model.labels:
        raise XgenError(f"{where}: the model has no label {positive_label!r} (its labels: {list(model.labels)[:10]}); "
                        "set the classifier's positive_label")  # fmt: skip


def save(model, uri: str) -> str:
    """Write the model's .bin to uri (any store); returns its SHA-256."""
    with tempfile.TemporaryDirectory(prefix="xgen-fasttext-") as folder:
        path = Path(folder) / "model.bin"
        model.save_model(str(path))
        data = path.read_bytes()
    store_for(uri).write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


def file_digest(uri: str) -> str:
    digest = hashlib.sha256()
    with store_for(uri).open_read(uri) as stream:
        for chunk in iter(lambda: stream.read(_COPY_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_model_file(uri: str, sha256: str) -> Path:
    """A local path holding the model at uri: the file itself for a local URI, else a cached download. Either way its
    SHA-256 must be the recorded one (a model replaced since it was recorded is refused, not silently used)."""
    uri = normalize_uri(uri)
    if not is_gcs(uri):
        path = Path(uri.removeprefix("file://"))
        if file_digest(str(path)) != sha256:
            raise XgenError(f"model file {uri} changed since quality_train recorded it (SHA-256 {sha256[:12]}...)")
        return path
    target = CACHE_DIR / f"{sha256}.bin"
    if not target.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        partial = CACHE_DIR / f"{sha256}.{os.getpid()}.part"
        digest = hashlib.sha256()
        with store_for(uri).open_read(uri) as stream, open(partial, "wb") as out:
            for chunk in iter(lambda: stream.read(_COPY_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink()
            raise XgenError(f"model file {uri} changed since quality_train recorded it (SHA-256 {sha256[:12]}...)")
        partial.replace(target)  # atomic: concurrent workers each write their own part file
    return target


@dataclass(frozen=True)
class ModelRef:
    """A classifier as later stages see it: where its .bin lives, its digest and the label that is its score."""

    name: str
    kind: str
    uri: str
    sha256: str
    positive_label: str


_LOADED: dict[str, object] = {}


def load(ref: ModelRef):
    """The fastText model behind ref, loaded once per Python process (Spark reuses its Python workers)."""
    import fasttext

    if ref.sha256 not in _LOADED:
        _LOADED[ref.sha256] = fasttext.load_model(str(local_model_file(ref.uri, ref.sha256)))
    return _LOADED[ref.sha256]
