import numpy as np
import pytest

from xgen_core.data import decontam, heuristics, textclf
from xgen_core.data.mixture import SignalRule  # noqa: F401  (import check: mixture needs no Spark session to load)

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


def test_text_classifier_learns_separates_and_round_trips():
    rng = np.random.default_rng(0)
    good_vocab = ["theorem", "proof", "integral", "equation", "lemma", "derivative", "matrix", "vector"]
    bad_vocab = ["click", "subscribe", "cookie", "deal", "cart", "login", "banner", "sale"]
    make = lambda vocab: " ".join(rng.choice(vocab + ["the", "a", "of"], size=40))
    texts = [make(good_vocab) for _ in range(60)] + [make(bad_vocab) for _ in range(60)]
    labels = [1] * 60 + [0] * 60
    settings = textclf.TrainSettings(dim=8, buckets=4096, epochs=10, learning_rate=1.0, seed=3)
    model = textclf.train(texts, labels, settings)
    held_out = [make(good_vocab) for _ in range(20)] + [make(bad_vocab) for _ in range(20)]
    assert textclf.evaluate(model, held_out, [1] * 20 + [0] * 20)["accuracy"] >= 0.95
    restored = textclf.TextClassifier.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(restored.scores(held_out), model.scores(held_out))
    again = textclf.train(texts, labels, settings)  # same data and seed: the same model, bit for bit
    np.testing.assert_array_equal(again.embeddings, model.embeddings)
