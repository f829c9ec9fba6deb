"""RULER's synthetic long-context tasks, generated at a target length in the evaluated model's own tokens.

Follows NVIDIA/RULER (scripts/synthetic.yaml, scripts/data/synthetic/{niah,variable_tracking,
common_words_extraction,freq_words_extraction,qa}.py, scripts/eval/synthetic/constants.py): the same task
table, templates, answer prefixes, needle formats, haystacks, insertion depths and scoring. A sample's length is
RULER's: prompt tokens (BOS included, as the model sees it) plus the tokens it may generate, at most the target.
As in RULER the haystack size is found once per task and length by binary search on a probe, then each sample
shrinks it by the task's step until it fits.

Where RULER reads files this project cannot fetch, the corpus stands in:
- the "essay" haystack (Paul Graham essays) is the evaluated model's held-out corpus documents, whitespace-joined;
- QA (RULER's SQuAD / HotpotQA) is a cloze question over the same documents: a sentence of the gold passage with
  one word blanked, asked among distractor passages ("Document i: ..."), any reference counts (string_match_part);
- sentence splitting (RULER: nltk punkt, a data download) is a regular expression on ., ! and ?.
Needle keys come from wonderwords' adjective and noun lists as in RULER (an adjective-noun pair drawn directly
rather than from the 6M-entry product list RULER materialises). Below 4,096 tokens the essay haystack's step is 50
words instead of RULER's 500 (a 500-word step does not fit a 256-token context) and the vt few-shot example gets
half the target instead of RULER's fixed 500 tokens.
"""

from __future__ import annotations

import dataclasses
import random
import re
import string
import uuid
import zlib
from functools import lru_cache
from typing import Callable

import numpy as np

from xgen_core.errors import XgenError

# RULER scripts/data/synthetic/constants.py: template, answer prefix, tokens to generate, per task family.
FAMILIES = {
    "niah": (
        "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
        "{type_needle_v} for {query} mentioned in the provided text?",
        " The special magic {type_needle_v} for {query} mentioned in the provided text are",
        128,
    ),
    "variable_tracking": (
        "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
        "Question: Find all variables that are assigned the value {query} in the text above.",
        " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
        "assigned the value {query}, they are: ",
        30,
    ),
    "common_words_extraction": (
        "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
        "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
        " Answer: The top 10 words that appear most often in the list are:",
        120,
    ),
    "freq_words_extraction": (
        "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
        "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
        "What are the three most frequently appeared words in the above coded text?",
        " Answer: According to the coded text above, the three most frequently appeared words are:",
        50,
    ),
    "qa": (
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given "
        "documents. Only give me the answer and do not output any other words.\n\nQuestion: {query}",
        " Answer:",
        32,
    ),
}


def _niah(haystack: str, k: str, v: str, num_k: int = 1, num_v: int = 1, num_q: int = 1) -> tuple[str, dict]:
    return "niah", {"type_haystack": haystack, "type_needle_k": k, "type_needle_v": v, "num_needle_k": num_k,
                    "num_needle_v": num_v, "num_needle_q": num_q}


# RULER scripts/synthetic.yaml (qa_1 / qa_2 become one `qa` over the corpus' own documents).
TASKS: dict[str, tuple[str, dict]] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", num_k=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", num_v=4),
    "niah_multiquery": _niah("essay", "words", "numbers", num_q=4),
    "vt": ("variable_tracking", {"num_chains": 1, "num_hops": 4}),
    "cwe": ("common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": ("freq_words_extraction", {"alpha": 2.0}),
    "qa": ("qa", {}),
}

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
DEPTHS = [int(depth) for depth in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]
PASSAGE_WORDS = 64  # a QA passage: the first words of a document (RULER's SQuAD paragraphs run ~120 words)
CLOZE_MIN_CHARS = 5


def string_match_all(prediction: str, references: list[str]) -> float:
    """RULER's niah / vt / cwe / fwe metric for one sample: the share of references found (case-insensitive)."""
    return sum(ref.lower() in prediction.lower() for ref in references) / len(references)


def string_match_part(prediction: str, references: list[str]) -> float:
    """RULER's QA metric for one sample: 1 when any reference is found (case-insensitive)."""
    return float(any(ref.lower() in prediction.lower() for ref in references))


def metric_for(task: str) -> Callable[[str, list[str]], float]:
    return string_match_part if TASKS[task][0] == "qa" else string_match_all


def postprocess(prediction: str) -> str:
    """RULER's postprocess_pred: strip, control characters to newlines."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


@dataclasses.dataclass(frozen=True)
class Sample:
    task: str
    length: int  # the target: prompt tokens + tokens to generate never exceed it
    index: int
    prompt: str  # template and answer prefix, what the model continues
    references: list[str]
    tokens: int  # RULER's length: prompt tokens (BOS included) + max_new_tokens
    max_new_tokens: int


@dataclasses.dataclass(frozen=True)
class Skipped:
    task: str
    length: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Corpus:
    """What the essay haystack and QA read: words of the documents in order, and QA passages with their cloze."""

    words: list[str]
    passages: list[str]
    questions: list[tuple[int, str, str]]  # (passage index, question, answer)


def build_corpus(documents: list[str], seed: int) -> Corpus:
    texts = [re.sub(r"\s+", " ", doc).strip() for doc in documents if doc and doc.strip()]
    words = " ".join(texts).split(" ") if texts else []
    passages, questions = [], []
    for text in texts:
        passage = " ".join(text.split(" ")[:PASSAGE_WORDS])
        cloze = _cloze(passage, random.Random(f"{seed}:{len(passages)}"))
        passages.append(passage)
        if cloze:
            questions.append((len(passages) - 1, *cloze))
    return Corpus(words, passages, questions)


def _cloze(passage: str, rng: random.Random) -> tuple[str, str] | None:
    """A question whose answer is a word of `passage`: one of its sentences with that word blanked."""
    words_in_passage = re.findall(r"[A-Za-z]+", passage.lower())
    candidates = []
    for sentence in split_sentences(passage):
        for word in re.findall(rf"\b[A-Za-z]{{{CLOZE_MIN_CHARS},}}\b", sentence):
            if words_in_passage.count(word.lower()) == 1:
                candidates.append((sentence, word))
    if not candidates:
        return None
    sentence, word = rng.choice(candidates)
    blanked = re.sub(rf"\b{word}\b", "____", sentence, count=1)
    return f'Which word is missing from this sentence of the documents: "{blanked}"?', word


def split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


@lru_cache(maxsize=1)
def _word_lists() -> tuple[list[str], list[str], list[str]]:
    from wonderwords import random_word

    def read(name):
        return random_word._get_words_from_text_file(name)  # RULER reads these lists the same way

    return read("nounlist.txt"), read("adjectivelist.txt"), read("verblist.txt")


def random_value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        nouns, adjectives, _ = _word_lists()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise XgenError(f"unknown needle type {kind!r}")


def _insert_at_depths(sentences: list[str], inserts: list[str], rng: random.Random) -> str:
    """RULER's essay insertion: each insert after the sentence at a depth drawn from DEPTHS (0-100 %)."""
    positions = [0] + sorted(int(len(sentences) * depth / 100) for depth in rng.sample(DEPTHS, len(inserts)))
    positions.append(len(sentences))
    parts = []
    for i in range(1, len(positions)):
        parts.append(" ".join(sentences[positions[i - 1]:positions[i]]))
        if i - 1 < len(inserts):
            parts.append(inserts[i - 1])
    return " ".join(parts)


def _essay(corpus: Corpus, size: int) -> list[str]:
    if not corpus.words:
        raise XgenError("the essay haystack needs documents: the corpus has none")
    repeats = -(-size // len(corpus.words))
    return split_sentences(" ".join((corpus.words * repeats)[:size]))


def niah(size: int, rng: random.Random, corpus: Corpus, args: dict) -> tuple[str, list[str]]:
    num_k = max(args["num_needle_k"], args["num_needle_q"])
    kind_k, kind_v = args["type_needle_k"], args["type_needle_v"]
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(random_value(kind_k, rng))
        values.append([random_value(kind_v, rng) for _ in range(args["num_needle_v"])])
        needles += [NEEDLE.format(type_needle_v=kind_v, key=keys[-1], value=value) for value in values[-1]]
    rng.shuffle(needles)
    if args["type_haystack"] == "essay":
        context = _insert_at_depths(_essay(corpus, size), needles, rng)
    else:
        if args["type_haystack"] == "noise":
            sentences = [NOISE] * size
        else:  # "needle": distractor needles with keys and values of their own
            sentences = [NEEDLE.format(type_needle_v=kind_v, key=random_value(kind_k, rng),
                                       value=random_value(kind_v, rng)) for _ in range(size)]
        for index, needle in zip(sorted(rng.sample(range(size), len(needles)), reverse=True), needles):
            sentences.insert(index, needle)
        context = "\n".join(sentences)
    asked = rng.sample(range(num_k), args["num_needle_q"])
    queries = [keys[i] for i in asked]
    answers = [value for i in asked for value in values[i]]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, prefix, _ = FAMILIES["niah"]
    template, type_needle_v = template + prefix, kind_v
    if args["num_needle_q"] * args["num_needle_v"] == 1:  # RULER's singular wording
        for plural, singular in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template = template.replace(plural, singular)
        type_needle_v = kind_v[:-1]
    return template.format(type_needle_v=type_needle_v, context=context, query=query), answers


def _chain(num_hops: int, rng: random.Random, letters: int, value: str) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, chain


def _vt_text(size: int, rng: random.Random, num_hops: int, letters: int, value: str) -> tuple[str, list[str]]:
    names, chain = _chain(num_hops, rng, letters, value)
    sentences = [NOISE] * size
    for offset, (position, line) in enumerate(zip(sorted(rng.sample(range(len(sentences)), len(chain))), chain)):
        sentences.insert(position + offset, line)
    context = "\n".join(sentences).replace(". \n", ".\n")
    template, prefix, _ = FAMILIES["variable_tracking"]
    return (template + prefix).format(context=context, query=value, num_v=num_hops + 1), names


def vt(size: int, rng: random.Random, corpus: Corpus, args: dict, example: str = "") -> tuple[str, list[str]]:
    """Variable tracking over the noise haystack, after one solved example (RULER's ICL example, its variable
    names and value drawn afresh for every sample)."""
    text, names = _vt_text(size, rng, args["num_hops"], 5, str(rng.randint(10000, 99999)))
    if example:
        text = _randomize_example(example, args["num_hops"], rng) + "\n" + text
    return text, names


def _randomize_example(example: str, num_hops: int, rng: random.Random) -> str:
    for name in example.strip().split()[-num_hops - 1:]:
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    return example.replace("12345", str(rng.randint(10000, 99999)))


def _cwe_words() -> list[str]:
    nouns, adjectives, verbs = _word_lists()
    words = sorted(set(nouns + adjectives + verbs))
    random.Random(42).shuffle(words)  # RULER shuffles with its default seed (42)
    return words


def _cwe_example(num_words: int, common_repeats: int, uncommon_repeats: int, num_common: int,
                 rng: random.Random) -> tuple[str, list[str]]:
    words = _cwe_words()
    if num_words <= len(words):
        chosen = rng.sample(words, num_words)
    else:  # RULER draws from a larger English list here; adjective-noun pairs are this project's larger list
        nouns, adjectives, _ = _word_lists()
        chosen = list(dict.fromkeys(f"{rng.choice(adjectives)}-{rng.choice(nouns)}" for _ in range(num_words * 2)))
        chosen = chosen[:num_words]
    common, uncommon = chosen[:num_common], chosen[num_common:]
    listed = common * common_repeats + uncommon * uncommon_repeats
    rng.shuffle(listed)
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(listed)), common


def cwe(size: int, rng: random.Random, corpus: Corpus, args: dict, long: bool) -> tuple[str, list[str]]:
    """Common words extraction: one solved example, then the list; below 4,096 tokens RULER's lighter repeats."""
    template, prefix, _ = FAMILIES["common_words_extraction"]
    template += prefix
    num_cw = args["num_cw"]
    shot_args = (40, 10, 3) if long else (20, 3, 1)
    shot_context, shot_answer = _cwe_example(*shot_args, num_cw, rng)
    shot = template.format(context=shot_context) + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(shot_answer))
    repeats = (args["freq_cw"], args["freq_ucw"]) if long else (6, 1)
    context, answer = _cwe_example(size, *repeats, num_cw, rng)
    return shot + "\n" + template.format(context=context), answer


def zeta(alpha: float, terms: int = 1000) -> float:
    """Riemann zeta for alpha > 1 (Euler-Maclaurin tail after `terms` terms; error far below 1e-9)."""
    k = np.arange(1, terms, dtype=np.float64)
    return float(np.sum(k**-alpha) + terms ** (1 - alpha) / (alpha - 1) + 0.5 * terms**-alpha)


def fwe(size: int, rng: random.Random, corpus: Corpus, args: dict, vocab_size: int) -> tuple[str, list[str]]:
    """Frequent words extraction: coded 6-letter words drawn with Zipf(alpha) counts, the top one '...' (noise)."""
    alpha = args["alpha"]
    vocab = {"".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(vocab_size)}
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
    vocab_list = sorted(vocab)
    rng.shuffle(vocab_list)
    vocab_list[0] = "..."
    counts = (size * np.arange(1, vocab_size + 1, dtype=np.float64) ** -alpha / zeta(alpha)).astype(int)
    words = [word for word, count in zip(vocab_list, counts) for _ in range(count)]
    rng.shuffle(words)
    template, prefix, _ = FAMILIES["freq_words_extraction"]
    return (template + prefix).format(context=" ".join(words), query=""), vocab_list[1:4]


def qa(size: int, rng: random.Random, corpus: Corpus, args: dict, question: int) -> tuple[str, list[str]]:
    """The gold passage among `size - 1` distractors, shuffled, each as "Document i:"."""
    gold, query, answer = corpus.questions[question % len(corpus.questions)]
    others = [i for i in range(len(corpus.passages)) if i != gold]
    chosen = [gold] + rng.sample(others, min(size - 1, len(others)))
    if size > len(corpus.passages):  # RULER repeats its documents when more are asked for than exist
        chosen += [others[i % len(others)] for i in range(size - len(corpus.passages))] if others else []
    rng.shuffle(chosen)
    context = "\n\n".join(f"Document {i + 1}:\n{corpus.passages[p]}" for i, p in enumerate(chosen))
    template, prefix, _ = FAMILIES["qa"]
    return (template + prefix).format(context=context, query=query), [answer]


def _step(task: str, length: int) -> int:
    """Haystack units a sample gives up when it overshoots (RULER's `incremental`)."""
    family, args = TASKS[task]
    short = length < 4096
    if family == "niah":
        return {"essay": 50 if short else 500, "noise": 5 if short else 25, "needle": 5 if short else 25}[
            args["type_haystack"]]
    return {"variable_tracking": 5 if short else 10, "common_words_extraction": 10,
            "freq_words_extraction": max(1, length // 32), "qa": 1 if short else 10}[family]


def _largest_fitting(make: Callable[[int], str], count: Callable[[str], int], budget: int,
                     lower: int) -> int | None:
    """The largest haystack size whose text fits `budget` tokens, None when `lower` does not: doubling, then a
    binary search (RULER searches between bounds estimated from one probe; doubling needs no estimate)."""
    if count(make(lower)) > budget:
        return None
    best, high = lower, lower * 2
    while count(make(high)) <= budget:
        best, high = high, high * 2
    low = best + 1
    high -= 1
    while low <= high:
        mid = (low + high) // 2
        if count(make(mid)) <= budget:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return best


class TaskBuilder:
    """Samples of RULER tasks at target lengths, counted in one tokenizer's tokens.

    `count_tokens(text)` is the number of tokens the model sees for a prompt (its BOS included);
    `max_new_tokens` caps RULER's per-task tokens to generate (0: RULER's own numbers).
    """

    def __init__(self, count_tokens: Callable[[str], int], corpus: Corpus, seed: int, max_new_tokens: int = 0):
        self.count = count_tokens
        self.corpus = corpus
        self.seed = seed
        self.max_new_tokens = max_new_tokens

    def tokens_to_generate(self, task: str) -> int:
        ruler = FAMILIES[TASKS[task][0]][2]
        return min(ruler, self.max_new_tokens) if self.max_new_tokens else ruler

    def _rng(self, *parts) -> random.Random:
        return random.Random(zlib.crc32(":".join(map(str, (self.seed, *parts))).encode()))

    def _maker(self, task: str, length: int, budget: int) -> tuple[Callable, int] | str:
        """fn(size, rng, index) -> (text, references), and the smallest size; or why the task cannot be made."""
        family, args = TASKS[task]
        if family == "niah":
            needles = max(args["num_needle_k"], args["num_needle_q"]) * args["num_needle_v"]
            lower = 1 if args["type_haystack"] == "essay" else needles
            if args["type_haystack"] == "essay" and not self.corpus.words:
                return "no corpus documents for the essay haystack"
            return (lambda size, rng, index: niah(size, rng, self.corpus, args)), lower
        if family == "variable_tracking":
            example = self._vt_example(task, length)
            if example is None:
                return "the solved example alone does not fit"
            return (lambda size, rng, index: vt(size, rng, self.corpus, args, example)), args["num_hops"] + 1
        if family == "common_words_extraction":
            long = length >= 4096
            return (lambda size, rng, index: cwe(size, rng, self.corpus, args, long)), args["num_cw"]
        if family == "freq_words_extraction":
            vocab_size = budget // 50
            if vocab_size < 4:
                return f"a {budget}-token prompt leaves RULER's vocabulary (budget // 50) under 4 coded words"
            # enough words that the three answers (ranks 2-4 of Zipf(alpha)) each occur at least once
            lower = max(vocab_size, int(np.ceil(4 ** args["alpha"] * zeta(args["alpha"]))))
            return (lambda size, rng, index: fwe(size, rng, self.corpus, args, vocab_size)), lower
        if not self.corpus.questions:
            return "no corpus passage to ask a question about"
        return (lambda size, rng, index: qa(size, rng, self.corpus, args, index)), 1

    def _vt_example(self, task: str, length: int) -> str | None:
        """RULER's ICL example: a solved chain of 3-letter variables and value 12345 (renamed per sample)."""
        args = TASKS[task][1]
        budget = min(500, length // 2)
        hops = min(10, args["num_hops"])

        def make(size):
            return _vt_text(size, self._rng(task, "example"), hops, 3, "12345")[0]

        size = _largest_fitting(make, self.count, budget, hops + 1)
        if size is None:
            return None
        text, names = _vt_text(size, self._rng(task, "example"), hops, 3, "12345")
        return text + " " + " ".join(names) + "\n"

    def samples(self, task: str, length: int, n: int) -> list[Sample] | Skipped:
        prepared = self._prepare(task, length)
        if isinstance(prepared, Skipped):
            return prepared
        out = []
        for index in range(n):
            made = self._sample(prepared, index)
            if isinstance(made, Skipped):
                return made
            out.append(made)
        return out

    def sample(self, task: str, length: int, index: int) -> Sample | Skipped:
        """The `index`-th sample of a task at a length alone (what `samples` makes at that index)."""
        prepared = self._prepare(task, length)
        return prepared if isinstance(prepared, Skipped) else self._sample(prepared, index)

    def _prepare(self, task: str, length: int) -> tuple | Skipped:
        """(task, length, make, lower, size, budget, new tokens): the haystack size that fits, probed once."""
        if task not in TASKS:
            raise XgenError(f"unknown RULER task {task!r}; tasks: {', '.join(TASKS)}")
        new_tokens = self.tokens_to_generate(task)
        budget = length - new_tokens
        maker = self._maker(task, length, budget) if budget > 0 else "no room left after the tokens to generate"
        if isinstance(maker, str):
            return Skipped(task, length, maker)
        make, lower = maker
        size = _largest_fitting(lambda s: make(s, self._rng(task, length, "probe"), 0)[0], self.count, budget,
                                lower)
        if size is None:
            return Skipped(task, length, f"the smallest instance exceeds {length} tokens")
        return task, length, make, lower, size, budget, new_tokens

    def _sample(self, prepared: tuple, index: int) -> Sample | Skipped:
        task, length, make, lower, size, budget, new_tokens = prepared
        used = self._fit_sample(make, task, length, index, size, lower, budget)
        if used is None:
            return Skipped(task, length, f"sample {index} does not fit {length} tokens at its smallest")
        text, references = make(used, self._rng(task, length, index), index)
        return Sample(task, length, index, text, references, self.count(text) + new_tokens, new_tokens)

    def _fit_sample(self, make, task: str, length: int, index: int, size: int, lower: int,
                    budget: int) -> int | None:
        """RULER shrinks an overshooting sample by the task's step; the last step is then bisected so a sample
        lands within one haystack unit of the target rather than within one step."""
        def fits(units: int) -> bool:
            return self.count(make(units, self._rng(task, length, index), index)[0]) <= budget

        step, used = _step(task, length), size
        while not fits(used):
            if used <= lower:
                return None
            used = max(lower, used - step)
        low, high = used + 1, min(size, used + step) - 1
        while low <= high:
            mid = (low + high) // 2
            if fits(mid):
                used, low = mid, mid + 1
            else:
                high = mid - 1
        return used
