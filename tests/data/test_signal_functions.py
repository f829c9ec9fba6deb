import hashlib

import numpy as np
import pytest

import xgen_core.data.mixture  # noqa: F401  (import check: mixture needs no Spark session to load)
from xgen_core.config import load_config
from xgen_core.data import decontam, heuristics, textclf
from xgen_core.errors import XgenError

PROSE = (
    "The river runs through the valley and the town has grown along its banks. "
    "People come to see the old bridge, which was built with stone from the hills.\n"
    "In spring the water rises, and the farmers who live near it have to move their animals to higher fields."
)
THRESHOLDS = {"min_words": 20, "min_stop_words": 2, "min_alpha_word_ratio": 0.7, "max_duplicate_line_ratio": 0.3,
              "min_terminal_punctuation_line_ratio": 0.12, "max_bullet_line_ratio": 0.9}  # fmt: skip


def test_clean_prose_passes_every_rule():
    assert heuristics.first_failed_rule(heuristics.measure(PROSE), THRESHOLDS, domain_tagged=False) is None


@pytest.mark.parametrize(
    "text,rule",
    [
        ("buy now " * 3, "min_words"),
        ("\n".join(["- item one two three four five"] * 2 + ["- other item six seven eight nine ten eleven"] * 3), "max_bullet_line_ratio"),
        ("Apples pears plums grapes lemons limes melons figs dates kiwis mangos peaches cherries berries "
         "oranges apricots quinces guavas papayas nectarines. " * 2, "min_stop_words"),
        ("Home | About | Contact\n" * 12 + PROSE, "max_duplicate_line_ratio"),
        ("123 456 789 101 112 131 415 161 718 192 021 222 324 252 627 282 930 313 233 343 536 373 839 404 142 434 " + PROSE[:60], "min_alpha_word_ratio"),
    ],
)
def test_bad_documents_fail_with_the_rule_that_caught_them(text, rule):
    assert heuristics.first_failed_rule(heuristics.measure(text), THRESHOLDS, domain_tagged=False) == rule


def test_prose_rules_spare_code_and_math():
    code = (
        "def area(width, height):\n    return width * height\n\n\n"
        "def perimeter(width, height):\n    return 2 * (width + height)\n\n\n"
        "for i in range(10):\n    print(area(i, i + 1), perimeter(i, i + 1))\n"
    )
    signals = heuristics.measure(code)
    assert heuristics.first_failed_rule(signals, THRESHOLDS, domain_tagged=False) is not None
    assert heuristics.first_failed_rule(signals, THRESHOLDS, domain_tagged=True) is None


def test_unknown_rule_names_are_refused():
    with pytest.raises(ValueError, match="unknown heuristic rule"):
        heuristics.first_failed_rule(heuristics.measure(PROSE), {"min_wordz": 1}, domain_tagged=False)


def test_repetition_signals():
    words = ("alpha beta " * 50).split()
    assert heuristics.top_ngram_char_share(words, 2) > 0.9
    assert heuristics.duplicate_ngram_char_share(words, 5) == 1.0
    assert heuristics.duplicate_ngram_char_share(PROSE.split(), 5) == 0.0


def test_decontamination_finds_shared_13_grams_despite_formatting():
    index = decontam.build_index(decontam.eval_texts(["math_eval", "humaneval", "long_context"]), 13)
    question = decontam.eval_texts(["math_eval"])["math_eval"][2]
    reformatted = "Practice set.\n" + question.upper().replace(" ", "  ").replace(".", " .") + "\nAnswer: 51"
    assert decontam.contamination(reformatted, index, 13) == "math_eval"
    assert decontam.contamination(PROSE, index, 13) is None
    # A template's fixed wording is contamination; its placeholders are not text.
    template = decontam.eval_texts(["long_context"])["long_context"][0]
    assert "{" not in template
    assert decontam.contamination("intro " + template, index, 13) == "long_context"


def separable_texts(rng, n: int) -> tuple[list[str], list[str]]:
    good_vocab = ["theorem", "proof", "integral", "equation", "lemma", "derivative", "matrix", "vector"]
    bad_vocab = ["click", "subscribe", "cookie", "deal", "cart", "login", "banner", "sale"]
    make = lambda vocab: "\n".join(" ".join(rng.choice(vocab + ["the", "a", "of"], size=20)) for _ in range(2))
    return [make(good_vocab) for _ in range(n)], [make(bad_vocab) for _ in range(n)]


def test_fasttext_classifier_learns_and_is_a_bin_fasttext_opens(tmp_path):
    import fasttext

    rng = np.random.default_rng(0)
    positives, negatives = separable_texts(rng, 60)
    settings = load_config("tiny").quality_train.fasttext.model_copy(update={"bucket": 4096, "dim": 8})
    model = textclf.train(positives, negatives, settings, "__label__positive", seed=3)
    held_pos, held_neg = separable_texts(rng, 20)
    metrics = textclf.evaluate(model, held_pos, held_neg, "__label__positive")
    assert metrics["precision"] >= 0.95 and metrics["recall"] >= 0.95 and metrics["n"] == 40
    uri = str(tmp_path / "models" / "m.bin")
    digest = textclf.save(model, uri)
    assert digest == hashlib.sha256((tmp_path / "models" / "m.bin").read_bytes()).hexdigest()
    reopened = fasttext.load_model(uri)  # fastText's own loader: a real .bin
    assert sorted(reopened.labels) == ["__label__negative", "__label__positive"]
    ref = textclf.ModelRef("m", "quality", uri, digest, "__label__positive")
    np.testing.assert_allclose(
        textclf.scores(textclf.load(ref), held_pos + held_neg, "__label__positive"),
        textclf.scores(model, held_pos + held_neg, "__label__positive"),
    )


def test_a_model_file_changed_after_it_was_recorded_is_refused(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"first")
    digest = textclf.file_digest(str(path))
    assert textclf.local_model_file(str(path), digest) == path
    path.write_bytes(b"second")
    with pytest.raises(XgenError, match="changed since quality_train recorded it"):
        textclf.local_model_file(str(path), digest)
