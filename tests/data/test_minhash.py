import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from xgen_core.data.minhash import band_keys, estimated_jaccard, lsh_params, signatures, word_shingles

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
    sigs, has_shingles = signatures(TEXTS, ngram, num_perm, seed)
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
