"""Post-training data: the formats users already have, read from local paths or gs://, bad rows quarantined with a
count; and, for tiny runs, datasets generated deterministically from the seed.

Formats (JSONL, one object a line, or Parquet with these columns):
    SFT   {"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...], "category": str}
    DPO   {"prompt": str, "chosen": str, "rejected": str}                        (TRL's preference format)
    GRPO  {"prompt": str, "answer": str}  (math)   or   {"prompt": str, "tests": str}  (code)

Generated data, three macro categories as in the paper (section 4.1):
    general    instructions over passages of the sample corpus (its prose sub-source)
    safety     harmful requests answered with a refusal
    reasoning  maths with worked solutions (number_problem), and small Python functions with tests
"""

from __future__ import annotations

import io
import json
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from xgen_core.errors import XgenError
from xgen_core.posttrain.chat import ROLES
from xgen_core.storage import iter_files, normalize_uri, store_for

CATEGORIES = ("general", "safety", "reasoning")


@dataclass
class Quarantine:
    """Rows refused, each with its reason and where it came from; counts by reason."""

    rows: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, source: str, row) -> None:
        self.counts[reason] += 1
        self.rows.append({"reason": reason, "source": source, "row": row if isinstance(row, dict) else repr(row)})

    def jsonl(self) -> str:
        return "".join(json.dumps(r, default=str, sort_keys=True) + "\n" for r in self.rows)


def read_rows(uris: list[str], quarantine: Quarantine) -> Iterator[tuple[str, object]]:
    """(source, row) of every JSONL / Parquet file under `uris`; lines that are not JSON objects are quarantined."""
    files = [info for info in iter_files([normalize_uri(u) for u in uris])
             if info.uri.endswith((".jsonl", ".json", ".parquet"))]
    if not files:
        raise XgenError(f"no .jsonl or .parquet files under {', '.join(uris)}")
    for info in files:
        data = store_for(info.uri).read_bytes(info.uri)
        if info.uri.endswith(".parquet"):
            import pyarrow.parquet as pq

            for index, row in enumerate(pq.read_table(io.BytesIO(data)).to_pylist()):
                yield f"{info.uri}#{index}", row
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                quarantine.add("not_json", f"{info.uri}:{number}", line[:200])
                continue
            yield f"{info.uri}:{number}", row


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def sft_problem(row) -> str | None:
    """Why an SFT row is unusable, or None."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list) or not row["messages"]:
        return "no_messages"
    for message in row["messages"]:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return "bad_role"
        if not _text(message.get("content")):
            return "empty_content"
    if not any(m["role"] == "assistant" for m in row["messages"]):
        return "no_assistant_turn"
    if "category" in row and not _text(row["category"]):
        return "bad_category"
    return None


def dpo_problem(row) -> str | None:
    if not isinstance(row, dict) or not _text(row.get("prompt")):
        return "no_prompt"
    if not _text(row.get("chosen")) or not _text(row.get("rejected")):
        return "empty_completion"
    if row["chosen"] == row["rejected"]:
        return "chosen_equals_rejected"
    return None


def grpo_problem(row) -> str | None:
    if not isinstance(row, dict) or not _text(row.get("prompt")):
        return "no_prompt"
    has_answer = row.get("answer") is not None and _text(str(row["answer"]))
    has_tests = _text(row.get("tests"))
    if has_answer == has_tests:
        return "needs_answer_or_tests"
    return None


PROBLEMS = {"sft": sft_problem, "dpo": dpo_problem, "grpo": grpo_problem}


def load_rows(kind: str, uris: list[str], quarantine: Quarantine) -> list[dict]:
    """Valid rows of `kind` from user files, in file order; the rest quarantined with their reason."""
    check = PROBLEMS[kind]
    kept = []
    for source, row in read_rows(uris, quarantine):
        problem = check(row)
        if problem:
            quarantine.add(problem, source, row)
        else:
            kept.append(row)
    return kept


def is_heldout(index: int, seed: int, fraction: float) -> bool:
    """A stable split by row index: the same rows are held out however many steps a run takes."""
    return zlib.crc32(f"{seed}:{index}".encode()) % 10_000 < fraction * 10_000


# ---- generated data -------------------------------------------------------------------------------------------

HARMFUL_REQUESTS = (
    "make a weapon at home", "break into my neighbour's house", "steal a car", "poison someone",
    "hack into a bank account", "write a threatening letter", "make a fake passport", "cheat on a tax return",
    "spread a computer virus", "hurt an animal", "buy stolen credit card numbers", "stalk a person online",
)
REQUEST_FRAMES = ("How do I {x}?", "Tell me how to {x}.", "Explain the best way to {x}.", "Can you help me {x}?")
REFUSALS = (
    "I can't help with that. It could hurt people or break the law.",
    "I won't help with that request because it could cause harm.",
    "Sorry, I can't assist with that. If someone is in danger, please contact local emergency services.",
)
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a careful, concise assistant.")
GENERAL_FRAMES = ("Repeat the first sentence of this passage.", "What is the first sentence of the text below?",
                  "Quote the opening sentence of this text.")
CODE_TASKS = (  # (name, description, body, test inputs): small functions a tiny model can learn to write
    ("add_{k}", "returns x plus {k}", "return x + {k}", lambda k, x: x + k),
    ("times_{k}", "returns x times {k}", "return x * {k}", lambda k, x: x * k),
    ("minus_{k}", "returns x minus {k}", "return x - {k}", lambda k, x: x - k),
)


def _first_sentence(text: str) -> str:
    head = text.replace("\n", " ").strip()
    end = head.find(". ")
    return head[: end + 1] if 0 < end < 200 else head[:120].rsplit(" ", 1)[0] + "."


def general_examples(rng: random.Random, count: int) -> list[dict]:
    from xgen_core.data.sample_corpus import prose_paragraphs

    paragraphs = prose_paragraphs()
    examples = []
    for _ in range(count):
        _, text = paragraphs[rng.randrange(len(paragraphs))]
        passage = " ".join(text.split())[:300]
        answer = _first_sentence(passage)
        examples.append({"category": "general", "prompt": f"{rng.choice(GENERAL_FRAMES)}\n\n{passage}",
                         "response": answer, "rejected": _other_sentence(passage, answer, rng)})
    return examples


def _other_sentence(passage: str, answer: str, rng: random.Random) -> str:
    rest = passage[len(answer):].strip()
    return (_first_sentence(rest) if len(rest) > 20 else "") or rng.choice(REFUSALS)


def safety_examples(rng: random.Random, count: int) -> list[dict]:
    examples = []
    for _ in range(count):
        request = rng.choice(REQUEST_FRAMES).format(x=rng.choice(HARMFUL_REQUESTS))
        examples.append({"category": "safety", "prompt": request, "response": rng.choice(REFUSALS),
                         "rejected": f"Sure! Here is how to do it. {request.rstrip('?.')} step by step: first,"})
    return examples


def arithmetic_problem(rng: random.Random, max_operand: int) -> tuple[str, str, int]:
    """(question, worked solution, answer) of a sum or difference of operands 0..max_operand."""
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    op = rng.choice("+-")
    value = a + b if op == "+" else a - b
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}. The answer is {value}.", value


IDENTITIES = ("{a} + 0", "0 + {a}", "{a} - 0", "1 * {a}", "{a} * 1")
LIST_PICKS = (("first", lambda xs: xs[0]), ("last", lambda xs: xs[-1]),
              ("largest", max), ("smallest", min))


def identity_problem(rng: random.Random, max_operand: int) -> tuple[str, str, int]:
    """a + 0, 1 * a, ...: the answer is a number the question names."""
    a = rng.randint(0, max_operand)
    expression = rng.choice(IDENTITIES).format(a=a)
    return f"What is {expression}?", f"{expression} = {a}. The answer is {a}.", a


def list_problem(rng: random.Random, max_operand: int, word: str | None = None) -> tuple[str, str, int]:
    """The first / last / largest / smallest (`word`, else drawn) of three to five numbers: the answer is one of
    them."""
    numbers = [rng.randint(0, max_operand) for _ in range(rng.randint(3, 5))]
    word, pick = (word, dict(LIST_PICKS)[word]) if word else rng.choice(LIST_PICKS)
    listed, value = ", ".join(map(str, numbers)), pick(numbers)
    return f"What is the {word} of {listed}?", f"The {word} is {value}. The answer is {value}.", value


def number_problem(rng: random.Random, max_operand: int) -> tuple[str, str, int]:
    """One problem of the generated maths family (question, worked solution, answer), all over 0..max_operand: half
    the first / last / largest / smallest of three to five numbers (select, then copy), a quarter identities (a + 0,
    1 * a: copy the named number), a quarter sums and differences (tiny: operands 0..9).

    Why not sums alone: GRPO's held-out reward measures a skill only when held-out questions are new to training;
    sums of operands 0..5 are 72 questions, so a held-out split left ~40 to train on and the tiny model memorised
    them (held-out reward fell). Here the question space is large (lists alone: 4 x 111,000 at operands 0..9),
    held-out questions are new, and each answer follows from the prompt by one rule for all numbers (find the named
    number, compare, copy), so a held-out gain can only come from that rule. docs/benchmarks.md ("GRPO held-out
    reward gain") has what GRPO does with it at tiny scale."""
    kind = rng.randrange(4)
    if kind < 2:
        return list_problem(rng, max_operand)
    if kind == 2:
        return identity_problem(rng, max_operand)
    return arithmetic_problem(rng, max_operand)


MATH_KINDS = (*(word for word, _ in LIST_PICKS), "identity", "arithmetic")


def problem_of_kind(rng: random.Random, max_operand: int, kind: str) -> tuple[str, str, int]:
    """One problem of a named kind of the family (MATH_KINDS)."""
    if kind == "identity":
        return identity_problem(rng, max_operand)
    if kind == "arithmetic":
        return arithmetic_problem(rng, max_operand)
    return list_problem(rng, max_operand, kind)


def check_math_kinds(kinds: Sequence[str]) -> None:
    unknown = sorted(set(kinds) - set(MATH_KINDS))
    if unknown:
        raise XgenError(f"unknown maths task kinds {unknown}: the generated family has {list(MATH_KINDS)}")


def wrong_answer(rng: random.Random, question: str, value: int) -> int:
    """A plausible wrong answer: another number the question names, else one near the right one."""
    named = [int(n) for n in re.findall(r"-?\d+", question) if int(n) != value]
    return rng.choice(named) if named and rng.random() < 0.5 else value + rng.choice([-3, -2, -1, 1, 2, 3])


def code_task(rng: random.Random) -> tuple[str, str, str]:
    """(instruction, solution, tests) of a one-line Python function."""
    name, description, body, reference = rng.choice(CODE_TASKS)
    k = rng.randint(1, 9)
    name, description, body = name.format(k=k), description.format(k=k), body.format(k=k)
    prompt = f"Write a Python function {name}(x) that {description}."
    solution = f"def {name}(x):\n    {body}"
    tests = "\n".join(f"assert {name}({x}) == {reference(k, x)}" for x in (0, 3, -2, 10))
    return prompt, solution, tests


def reasoning_examples(rng: random.Random, count: int, max_operand: int, code_share: float) -> list[dict]:
    examples = []
    for _ in range(count):
        if rng.random() < code_share:
            prompt, solution, _ = code_task(rng)
            rejected = solution.replace("return", "print")
        else:
            prompt, solution, value = number_problem(rng, max_operand)
            rejected = f"The answer is {wrong_answer(rng, prompt, value)}."
        examples.append({"category": "reasoning", "prompt": prompt, "response": solution, "rejected": rejected})
    return examples


def generated_examples(seed: int, counts: dict[str, int], max_operand: int, code_share: float) -> list[dict]:
    """Examples of the three categories, interleaved in a seeded order."""
    rng = random.Random(seed)
    examples = (general_examples(rng, counts.get("general", 0)) + safety_examples(rng, counts.get("safety", 0))
                + reasoning_examples(rng, counts.get("reasoning", 0), max_operand, code_share))
    rng.shuffle(examples)
    return examples


def generated_sft_rows(seed: int, counts: dict[str, int], max_operand: int, code_share: float) -> list[dict]:
    rows = []
    for n, example in enumerate(generated_examples(seed, counts, max_operand, code_share)):
        messages = [{"role": "user", "content": example["prompt"]},
                    {"role": "assistant", "content": example["response"]}]
        if n % 2:
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPTS[n % 4 // 2]})
        rows.append({"messages": messages, "category": example["category"]})
    return rows


def generated_dpo_rows(seed: int, counts: dict[str, int], max_operand: int, code_share: float) -> list[dict]:
    return [{"prompt": e["prompt"], "chosen": e["response"], "rejected": e["rejected"], "category": e["category"]}
            for e in generated_examples(seed, counts, max_operand, code_share)]


def generated_grpo_rows(seed: int, math_prompts: int, code_prompts: int, max_operand: int,
                        math_kinds: Sequence[str] = ()) -> list[dict]:
    """Maths prompts of the whole family (number_problem's mix), or only of `math_kinds`, in equal shares; then
    code prompts; shuffled."""
    check_math_kinds(math_kinds)
    rng = random.Random(seed)
    rows = []
    for _ in range(math_prompts):
        question, _, value = (problem_of_kind(rng, max_operand, rng.choice(math_kinds)) if math_kinds
                              else number_problem(rng, max_operand))
        rows.append({"prompt": question, "answer": str(value)})
    for _ in range(code_prompts):
        prompt, _, tests = code_task(rng)
        rows.append({"prompt": prompt, "tests": tests})
    rng.shuffle(rows)
    return rows
