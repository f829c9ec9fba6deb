import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash, MinHashLSH

from xgen_core.config import load_config
from xgen_core.data import minhash
from xgen_core.data.minhash import band_keys, estimated_jaccard, lsh_params, signatures, word_shingles
from xgen_core.data.neardup_set import _Writer

TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up.",
    "short text",
    "",
    "   \n\t  ",
    "a b c d e f g h i j k l m n o p " * 60,
    "Ünïcödé tëxt\u00a0with\u2003odd spaces and a few more words to make shingles",
    "def f(x):\n    return x * 2\n\nprint(f(3))",
]


@pytest.mark.parametrize("ngram,num_perm,seed", [(5, 128, 1), (3, 64, 42), (1, 16, 7)])
def test_signatures_equal_datasketch(ngram, num_perm, seed):
    sigs, has_shingles = signatures(TEXTS, ngram, num_perm, seed, scheme="datasketch")
    for text, sig, has in zip(TEXTS, sigs, has_shingles):
        reference = MinHash(num_perm=num_perm, seed=seed)
        reference.update_batch(word_shingles(text, ngram))
        np.testing.assert_array_equal(sig, reference.hashvalues)
        assert has == bool(text.split())


def test_short_documents_get_distinct_signatures():
    sigs, has_shingles = signatures(["hello world", "goodbye moon", "hello world"], 5, 64, 1)
    assert has_shingles.all()
    assert not np.array_equal(sigs[0], sigs[1])
    np.testing.assert_array_equal(sigs[0], sigs[2])


def test_many_documents_cross_slice_boundaries():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(vocab, size=int(n))) for n in rng.integers(0, 3000, size=40)]
    sigs, _ = signatures(texts, 5, 32, 3)
    for text, sig in zip(texts, sigs):
        reference = MinHash(num_perm=32, seed=3)
        reference.update_batch(word_shingles(text, 5))
        np.testing.assert_array_equal(sig, reference.hashvalues)


def test_lsh_params_match_datasketch():
    for threshold in (0.5, 0.7, 0.8):
        lsh = MinHashLSH(threshold=threshold, num_perm=128)
        assert lsh_params(threshold, 128) == (lsh.b, lsh.r)


def test_band_keys_agree_exactly_when_band_values_agree():
    sigs, _ = signatures(["one two three four five six seven", "one two three four five six eight"], 1, 8, 1)
    keys = band_keys(sigs, bands=4, rows=2)
    same_band = (sigs[0].reshape(4, 2) == sigs[1].reshape(4, 2)).all(axis=1)
    np.testing.assert_array_equal(keys[0] == keys[1], same_band)
    # The same values in different bands must not share a key.
    constant = np.ones((1, 8), dtype=np.uint32)
    assert len(set(band_keys(constant, 4, 2)[0].tolist())) == 4


def test_estimated_jaccard_tracks_true_jaccard():
    words = [f"w{i}" for i in range(400)]
    left = " ".join(words[:300])
    right = " ".join(words[100:400])  # true word-1-gram Jaccard = 200 / 400 = 0.5
    sigs, _ = signatures([left, right], 1, 256, 1)
    assert abs(estimated_jaccard(sigs[:1], sigs[1:])[0] - 0.5) < 0.1


# ---- the fast scheme -------------------------------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def reference_fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def reference_fast_hashes(text: str, ngram: int) -> list[int]:
    """The fast scheme's 32-bit shingle hashes by its definition, one Python int at a time, over str.split words."""
    word_hashes = []
    for word in text.lower().split():
        encoded = word.encode("utf-8")
        word_hash = reference_fmix64((len(encoded) * minhash._WORD_LENGTH_SALT) & MASK64)
        for offset in range(0, len(encoded), 8):
            word_hash = reference_fmix64(word_hash ^ int.from_bytes(encoded[offset : offset + 8], "little"))
        word_hashes.append(word_hash)
    if not word_hashes:
        return []
    windows = [word_hashes] if len(word_hashes) <= ngram else [word_hashes[i : i + ngram] for i in range(len(word_hashes) - ngram + 1)]
    folded = []
    for window in windows:
        combined = 0
        for word_hash in window:
            combined = (combined * minhash._WORD_BASE + word_hash) & MASK64
        shingle = reference_fmix64(combined ^ minhash._SHINGLE_SALT)
        folded.append((shingle ^ (shingle >> 32)) & 0xFFFFFFFF)
    return folded


@pytest.mark.parametrize("ngram", [1, 3, 5])
def test_fast_hashes_follow_their_definition_over_str_split_words(ngram):
    texts = [*TEXTS, "ΣΊΣΥΦΟΣ Σ ΑΣ", "eightchr ninechars sixteen-chars-ok seventeen-chars-ok", "x\u0085y\u1680z\u2000w\u200aq\u2028r\u2029s\u202ft\u205fu\u3000v\x1cw\x1fz", "\u200bzero\u200bwidth is not space"]
    hashed, counts = minhash.fast_shingle_hashes(pa.array(texts), ngram)
    assert counts.tolist() == [len(word_shingles(text, ngram)) for text in texts]
    expected = [value for text in texts for value in reference_fast_hashes(text, ngram)]
    assert hashed.tolist() == expected


def test_fast_hashes_do_not_depend_on_how_a_batch_is_cut(monkeypatch):
    rng = np.random.default_rng(1)
    vocab = [f"w{i}é" for i in range(50)]
    texts = [" ".join(rng.choice(vocab, size=int(n))) for n in rng.integers(0, 40, size=60)]
    whole = signatures(texts, 5, 16, 1, scheme="fast")
    monkeypatch.setattr(minhash, "_BYTES_PER_PASS", 100)  # many passes, and documents longer than a pass
    cut = signatures(texts, 5, 16, 1, scheme="fast")
    np.testing.assert_array_equal(whole[0], cut[0])
    np.testing.assert_array_equal(whole[1], cut[1])
    one_by_one = np.vstack([signatures([text], 5, 16, 1, scheme="fast")[0] for text in texts])
    np.testing.assert_array_equal(whole[0], one_by_one)


def test_fast_signatures_of_an_arrow_slice_equal_those_of_its_texts():
    # Documents back to back in the buffer (no space between "ab" and "cd": words never run across documents),
    # empty and blank ones, a sliced array.
    texts = ["x ab", "cd y", "", "   ", "Ünïcode ÉTÉ ab", "ab"]
    whole = pa.array(["skipped", *texts, "skipped too"]).slice(1, len(texts))
    sigs, has_shingles = signatures(whole, 2, 16, 1, scheme="fast")
    one_by_one = [signatures([text], 2, 16, 1, scheme="fast") for text in texts]
    np.testing.assert_array_equal(sigs, np.vstack([sig for sig, _ in one_by_one]))
    assert has_shingles.tolist() == [True, True, False, False, True, True]


def test_fast_signatures_golden_values():
    # Pinned: a change here changes every stored "fast" signature (bump the dedup signature version with it).
    sigs, has_shingles = signatures(["The quick brown fox jumps over the lazy dog", "hello world"], 5, 6, 1, scheme="fast")
    assert sigs.tolist() == GOLDEN_FAST
    assert has_shingles.tolist() == [True, True]


GOLDEN_FAST = [
    [473468885, 407141111, 1179140126, 165485950, 716143209, 961393917],
    [654542375, 3640262353, 2574906819, 1363376020, 183871484, 1116567421],
]


def test_fast_equal_texts_get_equal_signatures_and_short_documents_differ():
    texts = ["Hello World", "hello\u00a0WORLD", "hello world again", "goodbye moon", "", " \t\u3000 ", "Hello World"]
    sigs, has_shingles = signatures(texts, 5, 64, 1, scheme="fast")
    assert has_shingles.tolist() == [True, True, True, True, False, False, True]
    np.testing.assert_array_equal(sigs[0], sigs[1])  # same lower-cased words
    np.testing.assert_array_equal(sigs[0], sigs[6])
    assert not np.array_equal(sigs[0], sigs[2]) and not np.array_equal(sigs[0], sigs[3])
    assert (sigs[4] == minhash.UINT32_MAX).all() and (sigs[5] == minhash.UINT32_MAX).all()


def true_jaccard(left: str, right: str, ngram: int) -> float:
    a, b = set(word_shingles(left, ngram)), set(word_shingles(right, ngram))
    return len(a & b) / len(a | b)


def test_fast_estimated_jaccard_tracks_true_jaccard_on_generated_pairs():
    writer = _Writer(seed=3, vocab_size=2000)
    lefts, rights = [], []
    for index in range(120):
        base = writer.words(200)
        keep = int(40 + index)  # shared run of words: true Jaccard spread over ~0.05 .. 0.9
        lefts.append(" ".join(base))
        rights.append(" ".join(base[:keep] + writer.words(200 - keep)))
    sigs, _ = signatures(lefts + rights, 5, 256, 1, scheme="fast")
    estimated = estimated_jaccard(sigs[: len(lefts)], sigs[len(lefts) :])
    truth = np.array([true_jaccard(left, right, 5) for left, right in zip(lefts, rights)])
    assert truth.min() < 0.15 and truth.max() > 0.6
    errors = estimated - truth
    assert abs(errors.mean()) < 0.01  # unbiased
    assert np.abs(errors).max() < 0.12  # ~4 binomial standard deviations at 256 permutations


def test_fast_scheme_on_an_empty_batch():
    sigs, has_shingles = signatures([], 5, 8, 1, scheme="fast")
    assert sigs.shape == (0, 8) and has_shingles.shape == (0,)


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ValueError, match="hash scheme"):
        signatures(["text"], 5, 8, 1, scheme="sha256")


def test_config_default_hash_scheme_is_fast_and_checked():
    assert load_config("tiny").dedup.hash_scheme == "fast"
    assert load_config("tiny", ["dedup.hash_scheme=datasketch"]).dedup.hash_scheme == "datasketch"
    with pytest.raises(Exception, match="hash_scheme"):
        load_config("tiny", ["dedup.hash_scheme=md5"])
