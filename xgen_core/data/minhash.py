"""MinHash signatures computed over whole batches of documents with numpy.

The signatures are bit-for-bit those of `datasketch.MinHash` (default "affine32" scheme, default seed handling):
each shingle is hashed with datasketch's `sha1_hash32`, pre-mixed with the 32-bit MurmurHash3 finaliser and
permuted with `a * h + b mod 2**32`, the permutation parameters drawn from `numpy.random.RandomState(seed)` in
datasketch's order. Only the SHA-1 of each shingle is a Python-level call; the permutations and the per-document
minimum run once per batch in numpy, which is what makes a Spark job over Arrow batches beat a per-document loop.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import accumulate

import numpy as np

UINT32_MAX = np.uint32(0xFFFFFFFF)
# Shingles permuted at once: 8192 x 128 permutations x 4 bytes = 4 MiB, small enough to stay in cache.
_SHINGLES_PER_SLICE = 8192


def word_shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-grams of the lower-cased text, UTF-8 encoded.

    A document with fewer than `ngram` words gets one shingle holding all its words, so two different short
    documents never share a shingle set (an empty set would give every short document the same signature).
    A document without words gets no shingle: it can only be matched exactly, by content hash.
    """
    words = text.lower().split()
    if not words:
        return []
    if len(words) <= ngram:
        return [" ".join(words).encode("utf-8")]
    return [" ".join(words[i : i + ngram]).encode("utf-8") for i in range(len(words) - ngram + 1)]


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b any), drawn in the same order from the same seed."""
    generator = np.random.RandomState(seed)
    a = generator.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = generator.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser, as datasketch applies it before the permutations (wrapping arithmetic)."""
    h = values.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def shingle_digests(text: str, ngram: int) -> bytes:
    """Concatenated SHA-1 digests (20 bytes each) of `word_shingles(text, ngram)`, in the same order.

    Faster than building the shingles: the normalised text is encoded once and each shingle is a byte slice of it
    (words hold no ASCII space after `str.split`, so splitting the encoded text on b" " gives the encoded words).
    """
    joined = " ".join(text.lower().split()).encode("utf-8")
    if not joined:
        return b""
    encoded_words = joined.split(b" ")
    if len(encoded_words) <= ngram:
        return hashlib.sha1(joined).digest()
    # starts[i] is the byte offset of word i; a shingle of words i..i+n-1 ends one byte before starts[i+n].
    starts = list(accumulate(map(len, encoded_words), lambda offset, length: offset + length + 1, initial=0))
    sha1 = hashlib.sha1
    return b"".join(map(lambda start, next_start: sha1(joined[start : next_start - 1]).digest(), starts[:-ngram], starts[ngram:]))


def signatures(texts: list[str], ngram: int, num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of many documents at once.

    Returns (signatures uint32[n_docs, num_perm], has_shingles bool[n_docs]). Documents without shingles keep the
    all-max signature datasketch gives an empty MinHash; callers must not band them.
    """
    digests = [shingle_digests(text, ngram) for text in texts]
    counts = np.fromiter((len(d) // 20 for d in digests), dtype=np.int64, count=len(texts))
    first_words = np.frombuffer(b"".join(digests), dtype="<u4").reshape(-1, 5)[:, 0]
    return min_per_document(fmix32(first_words), counts, num_perm, seed), counts > 0


def min_per_document(hashed: np.ndarray, counts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """Apply every permutation to every shingle hash and take the minimum per document, in bounded slices.

    Laid out permutation-major ([num_perm, shingles]) because numpy's reduceat is far faster along the last axis;
    one reused, cache-sized buffer avoids allocating (and page-faulting) a fresh array per slice.
    """
    a, b = permutations(num_perm, seed)
    a, b = a[:, None], b[:, None]
    result = np.full((num_perm, len(counts)), UINT32_MAX, dtype=np.uint32)
    doc_of_shingle = np.repeat(np.arange(len(counts)), counts)
    buffer = np.empty((num_perm, _SHINGLES_PER_SLICE), dtype=np.uint32)
    for start in range(0, len(hashed), _SHINGLES_PER_SLICE):
        stop = min(start + _SHINGLES_PER_SLICE, len(hashed))
        permuted = buffer[:, : stop - start]
        np.multiply(a, hashed[None, start:stop], out=permuted)
        np.add(permuted, b, out=permuted)
        docs = doc_of_shingle[start:stop]
        # Segment starts: positions where the document changes inside this slice.
        boundaries = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
        segment_min = np.minimum.reduceat(permuted, boundaries, axis=1)
        segment_docs = docs[boundaries]
        result[:, segment_docs] = np.minimum(result[:, segment_docs], segment_min)
    return np.ascontiguousarray(result.T)


@lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH picks for this threshold (equal false-positive/negative weights)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per (document, band): a mixed hash of the band's `rows` signature values.

    Two documents share a key in a band exactly when their band values agree (up to 64-bit collisions, which the
    optional Jaccard check removes).
    """
    values = sigs[:, : bands * rows].reshape(len(sigs), bands, rows).astype(np.uint64)
    key = np.full(values.shape[:2], np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    for row in range(rows):
        key = (key ^ values[:, :, row]) * np.uint64(0x100000001B3)
        key ^= key >> np.uint64(29)
    key = key ^ (np.arange(bands, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15))
    return fmix64(key).view(np.int64)


def fmix64(values: np.ndarray) -> np.ndarray:
    h = values.copy()
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def estimated_jaccard(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise share of equal signature values: the MinHash estimate of the Jaccard similarity."""
    return (left == right).mean(axis=1)
