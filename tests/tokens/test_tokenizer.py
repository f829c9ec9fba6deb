import pytest

from xgen_core.errors import XgenError
from xgen_core.tokens.tokenizer import (
    CHAT_TOKENS, SPECIAL_TOKENS, load_tokenizer, save_tokenizer, tokenizer_config, train_tokenizer,
)

TEXTS = [f"def add_{i}(x):\n    return x + {i}\n" for i in range(200)] + [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Ünïcödé text — with emoji 🙂 and tabs\t and CJK 汉字.",
]


def test_special_tokens_have_fixed_ids_and_text_round_trips(tmp_path):
    tokenizer = train_tokenizer(TEXTS, vocab_size=400, min_frequency=2)
    config = tokenizer_config(tokenizer, 400)
    save_tokenizer(tokenizer, config, tmp_path)
    loaded, loaded_config = load_tokenizer(tmp_path)
    assert loaded_config == config
    assert [loaded.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert config["pad_id"] == 0 and set(CHAT_TOKENS) <= set(config["special_tokens"])
    assert 256 + len(SPECIAL_TOKENS) < config["vocab_size"] <= 400
    for text in TEXTS[-2:] + ["never seen: ☃ qzxv"]:
        assert loaded.decode(loaded.encode(text).ids) == text


def test_chat_tokens_encode_as_single_ids():
    tokenizer = train_tokenizer(TEXTS, vocab_size=400, min_frequency=2)
    ids = tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == tokenizer.token_to_id("<|im_start|>") and ids[-1] == tokenizer.token_to_id("<|im_end|>")


def test_vocabulary_below_byte_alphabet_refused():
    with pytest.raises(XgenError, match="byte alphabet"):
        train_tokenizer(TEXTS, vocab_size=100, min_frequency=2)
