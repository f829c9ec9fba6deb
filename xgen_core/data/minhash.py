"""MinHash signatures computed over whole batches of documents with numpy, in one of two hash schemes.

Both schemes shingle alike (`word_shingles`: lower-cased words split as `str.split` does, word n-grams, one shingle
for a document shorter than n words, none for a document without words) and permute alike: each 32-bit shingle hash
is pre-mixed with the 32-bit MurmurHash3 finaliser and permuted with `a * h + b mod 2**32`, the permutation
parameters drawn from `numpy.random.RandomState(seed)` in datasketch's order. They differ in the shingle hash:

- "datasketch": datasketch's `sha1_hash32` of each UTF-8 shingle, so signatures are bit-for-bit those of
  `datasketch.MinHash` (default scheme and seed handling). One SHA-1 per shingle is a Python-level call.
- "fast": no per-shingle Python object at all. A batch is encoded once; word boundaries are found with numpy over
  the byte buffer; each word's bytes are read 8 at a time (little-endian uint64) and chained through MurmurHash3's
  fmix64, seeded with the word's length (`_word_hashes`); n consecutive word
  hashes are combined into a 64-bit shingle hash (MurmurHash3's fmix64), folded to 32 bits. Fixed constants and
  explicit byte order only, so signatures are the same on every run and machine; they are not datasketch's.

The permutations and the per-document minimum run once per batch in numpy (`min_per_document`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from itertools import accumulate

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UINT32_MAX = np.uint32(0xFFFFFFFF)
HASH_SCHEMES = ("fast", "datasketch")
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


def signatures(
    texts: list[str] | pa.Array, ngram: int, num_perm: int, seed: int, scheme: str = "datasketch"
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of many documents at once (a list of strings or an Arrow string array without nulls), with
    the shingle hash of `scheme` ("fast" or "datasketch").

    Returns (signatures uint32[n_docs, num_perm], has_shingles bool[n_docs]). Documents without shingles keep the
    all-max signature datasketch gives an empty MinHash; callers must not band them. The fast scheme hashes an
    Arrow array from its buffer, without a Python string per text.
    """
    if scheme == "fast":
        hashed, counts = fast_shingle_hashes(texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string()), ngram)
        return min_per_document(fmix32(hashed), counts, num_perm, seed), counts > 0
    if scheme != "datasketch":
        raise ValueError(f"unknown MinHash hash scheme {scheme!r}; expected one of {HASH_SCHEMES}")
    digests = [shingle_digests(text, ngram) for text in (texts.to_pylist() if isinstance(texts, pa.Array) else texts)]
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


# The fast scheme's constants. Changing any of them changes every "fast" signature (bump the stored-signature version).
_WORD_LENGTH_SALT = 0x9FB21C651E98DF25
_WORD_BASE = 0x9E3779B97F4A7C15  # odd; combines the word hashes of a shingle in order
_SHINGLE_SALT = 0x2545F4914F6CDD1D
# Bytes hashed per numpy pass: the uint64 per-byte arrays stay at a few MiB whatever the batch size.
_BYTES_PER_PASS = 1 << 20
# ASCII whitespace as str.split sees it: \t \n \v \f \r, the information separators \x1c-\x1f, space.
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True
# The rest of str.split's whitespace, UTF-8 encoded: U+0085, U+00A0 (2 bytes); U+1680, U+2000-U+200A, U+2028,
# U+2029, U+202F, U+205F, U+3000 (3 bytes). Words are therefore exactly those of `text.lower().split()`.
_SPACE_2_BYTES = np.array([0xC285, 0xC2A0], dtype=np.int64)
_SPACE_3_BYTES = np.array(
    [0xE19A80, *range(0xE28080, 0xE2808B), 0xE280A8, 0xE280A9, 0xE280AF, 0xE2819F, 0xE38080], dtype=np.int64
)


def fast_shingle_hashes(texts: pa.Array, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """The fast scheme's 32-bit shingle hashes of many documents (an Arrow string array without nulls),
    concatenated, and the shingle count per document.

    The shingles of a document are those of `word_shingles(text, ngram)`, in the same order; none is built: the
    words are found and hashed in the lower-cased texts' UTF-8 buffer, a pass of about _BYTES_PER_PASS at a time.
    """
    texts = lowered(texts)
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset : texts.offset + len(texts) + 1].astype(np.int64)
    data = np.frombuffer(texts.buffers()[2] or b"", dtype=np.uint8)
    hashes, counts = [], np.zeros(len(texts), dtype=np.int64)
    for first, last in _passes(offsets):
        pass_hashes, counts[first:last] = _shingle_hashes_of_pass(data[offsets[first] : offsets[last]], offsets[first:last] - offsets[first], ngram)
        hashes.append(pass_hashes)
    hashed = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    return (hashed ^ (hashed >> np.uint64(32))).astype(np.uint32), counts


def lowered(texts: pa.Array) -> pa.Array:
    """str.lower() of every text: Arrow's ascii_lower where a text is ASCII (the same there), Python's elsewhere."""
    ascii_only = pc.string_is_ascii(texts)
    lower = pc.ascii_lower(texts)
    if pc.all(ascii_only).as_py() is not False:
        return lower
    others = pc.invert(ascii_only)
    return pc.replace_with_mask(lower, others, pa.array([text.lower() for text in texts.filter(others).to_pylist()], pa.string()))


def _passes(offsets: np.ndarray):
    """(first, last) document ranges of about _BYTES_PER_PASS bytes each; a longer document gets its own pass."""
    first = 0
    while first < len(offsets) - 1:
        last = int(np.searchsorted(offsets, offsets[first] + _BYTES_PER_PASS, side="right")) - 1
        last = min(max(last, first + 1), len(offsets) - 1)
        yield first, last
        first = last


def _shingle_hashes_of_pass(buffer: np.ndarray, doc_starts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 shingle hashes of the documents of one pass (their bytes back to back, each starting at doc_starts),
    concatenated, and the shingle count of each document."""
    starts, ends = _word_bounds(buffer, doc_starts)
    words_per_doc = np.diff(np.searchsorted(starts, np.append(doc_starts, len(buffer))))
    word_hashes = _word_hashes(buffer, starts, ends)
    return _combine_words(word_hashes, words_per_doc, ngram)


def _word_bounds(buffer: np.ndarray, doc_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) byte offsets of the words: maximal runs of bytes that are not whitespace, inside
    one document (documents lie back to back, each starting at doc_starts)."""
    space = _ASCII_SPACE[buffer]
    if len(buffer) and buffer.max() >= 0x80:
        _mark_unicode_spaces(buffer, space)
    # Where a document starts (or the buffer ends) a word ends and another may start, spaces or not.
    cut = np.zeros(len(buffer) + 1, dtype=bool)
    cut[doc_starts] = True
    cut[-1] = True
    word = ~space
    starts = np.flatnonzero(word & (cut[:-1] | np.insert(space[:-1], 0, True)))
    ends = np.flatnonzero(word & (cut[1:] | np.append(space[1:], True))) + 1
    return starts, ends


def _mark_unicode_spaces(buffer: np.ndarray, space: np.ndarray) -> None:
    """Mark every byte of the multi-byte whitespace characters str.split splits on (UTF-8 is self-synchronising)."""
    wide = buffer.astype(np.int64)
    leads = np.flatnonzero(buffer[:-1] == 0xC2)
    hits = leads[np.isin((wide[leads] << 8) | wide[leads + 1], _SPACE_2_BYTES)]
    space[hits] = space[hits + 1] = True
    leads = np.flatnonzero((buffer[:-2] >= 0xE1) & (buffer[:-2] <= 0xE3))
    hits = leads[np.isin((wide[leads] << 16) | (wide[leads + 1] << 8) | wide[leads + 2], _SPACE_3_BYTES)]
    space[hits] = space[hits + 1] = space[hits + 2] = True


def _word_hashes(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Each word's hash: h = fmix64(length * salt), then h = fmix64(h ^ c) for each 8-byte piece c of the word, read
    little-endian, the last one zero-padded.

    Per word, not per byte: most words are one piece, so one gather and one fmix64 hash them; only the longer words
    take further rounds.
    """
    padded = np.zeros(len(buffer) + 8, dtype=np.uint8)
    padded[: len(buffer)] = buffer
    # Every byte offset seen as the start of a little-endian uint64 (unaligned reads of the padded buffer).
    pieces = np.ndarray(shape=(len(buffer),), dtype="<u8", buffer=padded, strides=(1,))
    length = ends - starts
    seeded = fmix64(length.astype(np.uint64) * np.uint64(_WORD_LENGTH_SALT))
    hashed = fmix64(seeded ^ (pieces[starts] & _low_bytes_mask(length)))
    todo, offset = np.flatnonzero(length > 8), 8
    while len(todo):
        remaining = length[todo] - offset
        piece = pieces[starts[todo] + offset] & _low_bytes_mask(remaining)
        hashed[todo] = fmix64(hashed[todo] ^ piece)
        todo, offset = todo[remaining > 8], offset + 8
    return hashed


def _low_bytes_mask(n_bytes: np.ndarray) -> np.ndarray:
    """uint64 masks keeping the low min(n, 8) bytes."""
    bits = np.minimum(n_bytes, 8).astype(np.uint64) * np.uint64(8)
    return np.where(bits == 64, np.uint64(0xFFFFFFFFFFFFFFFF), (np.uint64(1) << (bits & np.uint64(63))) - np.uint64(1))


def _combine_words(word_hashes: np.ndarray, words_per_doc: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 shingle hashes: fmix64 of the polynomial, in _WORD_BASE, of `ngram` consecutive word hashes.

    A document with fewer than `ngram` words gets one shingle of all its words; one without words gets none. The
    polynomial is rolled over the whole word array at once (contiguous slices, no gathers); only the positions where
    a document's shingle starts are kept.
    """
    shingles_per_doc = np.where(words_per_doc > 0, np.maximum(words_per_doc - ngram + 1, 1), 0)
    first_word = np.cumsum(words_per_doc) - words_per_doc
    padded = np.concatenate([word_hashes, np.zeros(ngram, dtype=np.uint64)])
    n_words = len(word_hashes)
    combined = padded[:n_words].copy()
    for k in range(1, ngram):
        combined *= np.uint64(_WORD_BASE)
        combined += padded[k : n_words + k]
    # Shingle starts: the first words_per_doc - ngram + 1 words of each document, or its first word if it is short.
    with_shingles = shingles_per_doc > 0
    runs = np.zeros(n_words + 1, dtype=np.int64)
    np.add.at(runs, first_word[with_shingles], 1)
    np.add.at(runs, (first_word + shingles_per_doc)[with_shingles], -1)
    start = np.flatnonzero(np.cumsum(runs[:n_words]) > 0)
    combined = combined[start]
    short_docs = np.flatnonzero(with_shingles & (words_per_doc < ngram))
    if len(short_docs):  # documents shorter than ngram words: a shorter polynomial
        length, first = words_per_doc[short_docs], first_word[short_docs]
        short_combined = np.zeros(len(short_docs), dtype=np.uint64)
        for k in range(ngram):
            inside = k < length
            short_combined = np.where(inside, short_combined * np.uint64(_WORD_BASE) + padded[first + k], short_combined)
        combined[np.searchsorted(start, first)] = short_combined
    return fmix64(combined ^ np.uint64(_SHINGLE_SALT)), shingles_per_doc
