"""Gopher / C4 / FineWeb-style heuristic quality signals and the rules that turn them into pass / fail.

`measure` returns the signal fields of one document; `first_failed_rule` names the first configured rule the
document breaks (None when it passes). Prose rules (stop words, alphabetic words, terminal punctuation, ...) are not
applied to documents carrying a domain tag: a Python file or a worked equation is not bad prose.
"""

from __future__ import annotations

import re
from collections import Counter

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("-", "*", "•", "‣", "◦", "·", "–")
TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", ":", ")", "”")
SYMBOLS = ("#", "...", "…")
_ALPHA = re.compile(r"[^\W\d_]")

SIGNAL_FIELDS = (
    "h_chars", "h_words", "h_mean_word_length", "h_symbol_ratio", "h_bullet_line_ratio", "h_ellipsis_line_ratio",
    "h_alpha_word_ratio", "h_stop_words", "h_duplicate_line_ratio", "h_top_bigram_char_ratio",
    "h_duplicate_5gram_char_ratio", "h_terminal_punctuation_line_ratio", "h_lorem_ipsum", "h_curly_braces",
)  # fmt: skip

# rule name -> (signal field, "min" | "max", applies to domain-tagged (code, math) documents too)
RULES = {
    "min_words": ("h_words", "min", True),
    "max_words": ("h_words", "max", True),
    "min_mean_word_length": ("h_mean_word_length", "min", False),
    "max_mean_word_length": ("h_mean_word_length", "max", False),
    "max_symbol_ratio": ("h_symbol_ratio", "max", False),
    "max_bullet_line_ratio": ("h_bullet_line_ratio", "max", False),
    "max_ellipsis_line_ratio": ("h_ellipsis_line_ratio", "max", True),
    "min_alpha_word_ratio": ("h_alpha_word_ratio", "min", False),
    "min_stop_words": ("h_stop_words", "min", False),
    "max_duplicate_line_ratio": ("h_duplicate_line_ratio", "max", True),
    "max_top_bigram_char_ratio": ("h_top_bigram_char_ratio", "max", False),
    "max_duplicate_5gram_char_ratio": ("h_duplicate_5gram_char_ratio", "max", True),
    "min_terminal_punctuation_line_ratio": ("h_terminal_punctuation_line_ratio", "min", False),
    "max_lorem_ipsum": ("h_lorem_ipsum", "max", True),
}


def measure(text: str) -> dict[str, float]:
    words = text.split()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    n_words = len(words)
    n_lines = max(1, len(lines))
    word_chars = sum(len(w) for w in words)
    return {
        "h_chars": float(len(text)),
        "h_words": float(n_words),
        "h_mean_word_length": word_chars / n_words if n_words else 0.0,
        "h_symbol_ratio": sum(text.count(s) for s in SYMBOLS) / max(1, n_words),
        "h_bullet_line_ratio": sum(line.startswith(BULLETS) for line in lines) / n_lines,
        "h_ellipsis_line_ratio": sum(line.endswith(("...", "…")) for line in lines) / n_lines,
        "h_alpha_word_ratio": sum(bool(_ALPHA.search(w)) for w in words) / max(1, n_words),
        "h_stop_words": float(sum(w.lower() in STOP_WORDS for w in words)),
        "h_duplicate_line_ratio": duplicate_share(lines),
        "h_top_bigram_char_ratio": top_ngram_char_share(words, 2),
        "h_duplicate_5gram_char_ratio": duplicate_ngram_char_share(words, 5),
        "h_terminal_punctuation_line_ratio": sum(line.endswith(TERMINAL_PUNCTUATION) for line in lines) / n_lines,
        "h_lorem_ipsum": float("lorem ipsum" in text.lower()),
        "h_curly_braces": float(text.count("{") + text.count("}")),
    }


def duplicate_share(items: list[str]) -> float:
    """Share of items that repeat an earlier item."""
    return (len(items) - len(set(items))) / len(items) if items else 0.0


def top_ngram_char_share(words: list[str], n: int) -> float:
    """Characters covered by the most frequent word n-gram, over all word characters (Gopher)."""
    if len(words) < n:
        return 0.0
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    return count * sum(len(w) for w in gram) / max(1, sum(len(w) for w in words))


def duplicate_ngram_char_share(words: list[str], n: int) -> float:
    """Characters of words inside word n-grams that occur more than once, over all word characters (Gopher)."""
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[i : i + n] = [True] * n
    duplicated = sum(len(w) for w, dup in zip(words, covered) if dup)
    return duplicated / max(1, sum(len(w) for w in words))


def first_failed_rule(signals: dict[str, float], thresholds: dict[str, float], domain_tagged: bool) -> str | None:
    """The first configured rule (in RULES order) the document breaks, or None."""
    unknown = set(thresholds) - set(RULES)
    if unknown:
        raise ValueError(f"unknown heuristic rule(s) {sorted(unknown)}; known: {list(RULES)}")
    for rule, (field, direction, applies_to_tagged) in RULES.items():
        if rule not in thresholds or (domain_tagged and not applies_to_tagged):
            continue
        value, limit = signals[field], thresholds[rule]
        if (direction == "min" and value < limit) or (direction == "max" and value > limit):
            return rule
    return None
