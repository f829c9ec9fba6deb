"""Decontamination: flag documents sharing a word 13-gram with an evaluation set the project ships.

Words are lower-cased runs of letters and digits, so formatting and punctuation differences do not hide an overlap.
The index maps each evaluation n-gram (as a string) to the set it came from; it is small enough to ship to every
worker. Evaluation items shorter than n words contribute nothing (as in GPT-3's and Llama's decontamination).
"""

from __future__ import annotations

import json
import re
from importlib import resources

_WORD = re.compile(r"\w+")

# set name -> (file in xgen_core/evals/data, the fields whose text is checked)
EVAL_SETS = {
    "humaneval": ("humaneval_prompts.jsonl", ("prompt",)),
    "math_eval": ("math_eval.jsonl", ("question",)),
    "long_context": ("long_context_templates.jsonl", ("template",)),
}


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> list[str]:
    tokens = words(text)
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def eval_texts(names: list[str]) -> dict[str, list[str]]:
    """The texts of the named evaluation sets shipped in xgen_core/evals/data."""
    texts: dict[str, list[str]] = {}
    folder = resources.files("xgen_core.evals") / "data"
    for name in names:
        filename, fields = EVAL_SETS[name]
        rows = [json.loads(line) for line in (folder / filename).read_text().splitlines() if line.strip()]
        # Template placeholders such as {haystack} are not text a document could share.
        texts[name] = [re.sub(r"\{[a-z_]+\}", " ", row[field]) for row in rows for field in fields]
    return texts


def build_index(texts_by_set: dict[str, list[str]], n: int) -> dict[str, str]:
    """n-gram -> name of the first evaluation set (in sorted order) containing it."""
    index: dict[str, str] = {}
    for name in sorted(texts_by_set):
        for text in texts_by_set[name]:
            for gram in ngrams(text, n):
                index.setdefault(gram, name)
    return index


def contamination(text: str, index: dict[str, str], n: int) -> str | None:
    """The evaluation set the document shares an n-gram with, or None."""
    for gram in ngrams(text, n):
        source = index.get(gram)
        if source is not None:
            return source
    return None
