"""fastText-style supervised text classifiers, trained and applied with numpy.

The model is fastText's supervised model for two classes: hashed word unigram + bigram embeddings averaged into a
document vector, a logistic output, trained with SGD and a linearly decaying learning rate. Written here because
fastText's own trainer (fasttext-numpy2-wheel 0.9.2) is not reproducible: five single-threaded runs with the same
seed on the same 120 documents gave two different models, and some runs stopped with "Encountered NaN". This one is
bit-for-bit reproducible (tested). Models are saved as .npz artifacts and scored over whole Arrow batches.
"""

from __future__ import annotations

import io
import re
import zlib
from dataclasses import dataclass

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")
_BIGRAM_MULTIPLIER = np.uint64(116049371)  # the constant fastText uses to combine word n-gram hashes


@dataclass(frozen=True)
class TrainSettings:
    dim: int
    buckets: int
    epochs: int
    learning_rate: float
    seed: int


def token_ids(text: str, buckets: int) -> np.ndarray:
    """Bucket ids of the document's words and word bigrams (stable across processes: CRC-32, not hash())."""
    tokens = _TOKEN.findall(text.lower())
    if not tokens:
        return np.zeros(1, dtype=np.int64)
    hashes = np.fromiter((zlib.crc32(t.encode("utf-8")) for t in tokens), dtype=np.uint64, count=len(tokens))
    bigrams = hashes[:-1] * _BIGRAM_MULTIPLIER + hashes[1:]
    return (np.concatenate([hashes, bigrams]) % np.uint64(buckets)).astype(np.int64)


@dataclass
class TextClassifier:
    embeddings: np.ndarray  # float32[buckets, dim]
    weights: np.ndarray  # float32[dim]
    bias: float

    @property
    def buckets(self) -> int:
        return self.embeddings.shape[0]

    def document_vectors(self, texts: list[str]) -> np.ndarray:
        ids = [token_ids(text, self.buckets) for text in texts]
        counts = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        summed = np.add.reduceat(self.embeddings[np.concatenate(ids)], np.r_[0, np.cumsum(counts)[:-1]], axis=0)
        return summed / counts[:, None]

    def scores(self, texts: list[str]) -> np.ndarray:
        """Probability of the positive class for each text."""
        if not texts:
            return np.empty(0, dtype=np.float64)
        logits = self.document_vectors(texts) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, embeddings=self.embeddings, weights=self.weights, bias=np.float64(self.bias))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TextClassifier:
        arrays = np.load(io.BytesIO(data))
        return cls(arrays["embeddings"], arrays["weights"], float(arrays["bias"]))


def train(texts: list[str], labels: list[int], settings: TrainSettings) -> TextClassifier:
    """SGD on the logistic loss, one document at a time in a seeded order, learning rate decaying to zero."""
    rng = np.random.default_rng(settings.seed)
    embeddings = ((rng.random((settings.buckets, settings.dim), dtype=np.float32) - 0.5) / settings.dim).astype(
        np.float32
    )
    weights = np.zeros(settings.dim, dtype=np.float32)
    bias = 0.0
    ids = [token_ids(text, settings.buckets) for text in texts]
    targets = np.asarray(labels, dtype=np.float32)
    total_steps = max(1, settings.epochs * len(texts))
    step = 0
    for _ in range(settings.epochs):
        for index in rng.permutation(len(texts)):
            lr = settings.learning_rate * (1.0 - step / total_steps)
            step += 1
            doc_ids = ids[index]
            hidden = embeddings[doc_ids].mean(axis=0)
            prediction = 1.0 / (1.0 + np.exp(-(float(hidden @ weights) + bias)))
            gradient = prediction - targets[index]
            hidden_gradient = gradient * weights
            weights -= lr * gradient * hidden
            bias -= lr * gradient
            np.subtract.at(embeddings, doc_ids, lr * hidden_gradient / len(doc_ids))
    return TextClassifier(embeddings, weights, bias)


def evaluate(model: TextClassifier, texts: list[str], labels: list[int]) -> dict[str, float]:
    """Accuracy, precision and recall of the positive class at a 0.5 cut."""
    predicted = model.scores(texts) >= 0.5
    truth = np.asarray(labels, dtype=bool)
    true_positive = int((predicted & truth).sum())
    return {
        "accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
        "precision": true_positive / max(1, int(predicted.sum())),
        "recall": true_positive / max(1, int(truth.sum())),
        "n": int(len(truth)),
    }
