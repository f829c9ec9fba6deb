"""The `math_eval` stage: accuracy on GSM8K-format JSONL files and on a generated arithmetic set.

GSM8K format: one JSON object per line with "question" and "answer", the answer's final value after "####"
(as in openai/grade-school-math). Answers are checked with HF's math-verify (`parse` the reference and the
completion, `verify(gold, prediction)`), so "0.5", "1/2" and "\\frac{1}{2}" agree. A line that is not JSON,
lacks a field or whose reference math-verify cannot parse is quarantined with its reason (quarantine.jsonl and a
count per reason), never a crash; a file with no usable line fails the stage with that count.

Prompt: "Question: {question}\\nAnswer:" (lm-eval's gsm8k layout, zero-shot); the completion is cut where the
model starts another "Question:" before it is verified.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import PurePosixPath

from xgen_core.errors import XgenError
from xgen_core.evals import results as results_lib
from xgen_core.evals.models import TextModel, model_label, model_uris
from xgen_core.storage import join, store_for

EVAL = "math_eval"
GENERATED_TASK = "arithmetic"
ANSWER_MARK = "####"
PROMPT = "Question: {question}\nAnswer:"
STOP_TEXT = "Question:"


def gold_answer(answer: str) -> str:
    """The final value of a GSM8K answer: what follows the last '####' (the whole answer when there is none)."""
    return answer.rsplit(ANSWER_MARK, 1)[-1].strip() if ANSWER_MARK in answer else answer.strip()


def parse_answer(text: str) -> list:
    from math_verify import parse

    return parse(text)


def is_correct(gold: str, completion: str) -> bool:
    """math-verify's verdict on a completion against a reference value (both parsed; an unparsable completion
    is wrong)."""
    from math_verify import verify

    parsed_gold, parsed = parse_answer(gold), parse_answer(completion)
    return bool(parsed_gold and parsed) and bool(verify(parsed_gold, parsed))


def read_gsm8k(text: str, source: str) -> tuple[list[dict], list[dict]]:
    """(problems {"question", "gold"}, quarantined {"source", "line", "reason", "raw"}) of a GSM8K-format file."""
    problems, quarantined = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        reason, record = None, None
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            reason = "not_json"
        if reason is None and not isinstance(record, dict):
            reason = "not_an_object"
        elif reason is None:
            question, answer = record.get("question"), record.get("answer")
            if not isinstance(question, str) or not question.strip():
                reason = "no_question"
            elif not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
                reason = "no_answer"
            elif not parse_answer(gold_answer(str(answer))):
                reason = "unparsable_answer"
            else:
                problems.append({"question": question.strip(), "gold": gold_answer(str(answer))})
                continue
        quarantined.append({"source": source, "line": number, "reason": reason, "raw": line[:500]})
    return problems, quarantined


def arithmetic_problems(count: int, seed: int) -> list[dict]:
    """A deterministic set of one- and two-step word problems over small integers, in GSM8K format."""
    rng = random.Random(seed)
    names = ["Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana"]
    items = ["apples", "books", "coins", "pencils", "stamps", "marbles"]
    problems = []
    for index in range(count):
        name, item = rng.choice(names), rng.choice(items)
        a, b, c = rng.randint(2, 40), rng.randint(2, 20), rng.randint(2, 9)
        kind = index % 4
        if kind == 0:
            question, steps, value = (f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have?",
                                      f"{a} + {b} = {a + b}", a + b)
        elif kind == 1:
            a += b
            question, steps, value = (f"{name} has {a} {item} and gives away {b}. How many {item} are left?",
                                      f"{a} - {b} = {a - b}", a - b)
        elif kind == 2:
            question, steps, value = (f"{name} buys {c} boxes with {b} {item} in each. How many {item} is that?",
                                      f"{c} x {b} = {c * b}", c * b)
        else:
            total = b * c
            question, steps, value = (f"{name} shares {total} {item} equally among {c} friends and then finds {a} "
                                      f"more. How many {item} does one friend get if the found ones go to them?",
                                      f"{total} / {c} = {b}; {b} + {a} = {b + a}", b + a)
        problems.append({"question": question, "answer": f"{steps}\n{ANSWER_MARK} {value}"})
    return problems


def _file_task(path: str) -> str:
    return PurePosixPath(path.rstrip("/")).stem or "gsm8k"


def load_tasks(settings) -> tuple[dict[str, list[dict]], list[dict]]:
    """Task name -> problems, and every quarantined line; the generated set first, then each file."""
    tasks: dict[str, list[dict]] = {}
    quarantined: list[dict] = []
    if settings.generated:
        generated = "".join(json.dumps(p) + "\n" for p in arithmetic_problems(settings.generated, settings.seed))
        tasks[GENERATED_TASK], _ = read_gsm8k(generated, GENERATED_TASK)
    for path in settings.files:
        store = store_for(path)
        if not store.exists(path):
            raise XgenError(f"math_eval.files: no file at {path}")
        problems, bad = read_gsm8k(store.read_text(path), path)
        quarantined += bad
        if not problems:
            raise XgenError(f"math_eval.files: {path} has no usable problem ({len(bad)} lines quarantined: "
                            f"{dict(Counter(q['reason'] for q in bad))})")
        task = _file_task(path)
        if task in tasks:
            raise XgenError(f"math_eval.files: two inputs are both named {task!r}; rename one")
        tasks[task] = problems[: settings.max_problems] if settings.max_problems else problems
    if not tasks:
        raise XgenError("math_eval has nothing to evaluate: set math_eval.generated > 0 or math_eval.files")
    return tasks, quarantined


def cut_completion(completion: str) -> str:
    return completion.split(STOP_TEXT, 1)[0].strip()


def run(ctx) -> dict:
    settings = ctx.cfg.math_eval
    tasks, quarantined = load_tasks(settings)
    for bad in quarantined:
        ctx.log(f"quarantined {bad['source']} line {bad['line']}: {bad['reason']}")
    rows, predictions, steps = [], [], {}
    uris = model_uris(ctx)
    for uri in uris:
        model = TextModel.load(uri, settings.batch_size)
        label = model_label(uri)
        steps[label] = model.step
        listed = [(task, problem) for task, problems in tasks.items() for problem in problems]
        completions = model.complete([PROMPT.format(question=problem["question"]) for _, problem in listed],
                                     [settings.max_new_tokens] * len(listed))  # every task in shared batches
        correct: dict[str, list[bool]] = {task: [] for task in tasks}
        for (task, problem), completion in zip(listed, completions):
            answer = cut_completion(completion)
            correct[task].append(is_correct(problem["gold"], answer))
            predictions.append({"model": label, "task": task, "question": problem["question"],
                                "gold": problem["gold"], "completion": answer, "correct": correct[task][-1]})
        for task, verdicts in correct.items():
            rows.append(results_lib.result_row(EVAL, label, task, n=len(verdicts),
                                               score=100 * sum(verdicts) / len(verdicts)))
            ctx.log(f"{label} (step {model.step}) {task}: {sum(verdicts)}/{len(verdicts)} correct")
    store = store_for(ctx.output)
    results_lib.write_results(ctx.output, rows, title="Math (math-verify accuracy, 0-100)")
    for name, records in (("predictions.jsonl", predictions), ("quarantine.jsonl", quarantined)):
        store.write_text(join(ctx.output, name), "".join(json.dumps(r) + "\n" for r in records))
    counts = {"models": len(uris), "problems": sum(len(p) for p in tasks.values()), "quarantined": len(quarantined),
              **{f"quarantined_{reason}": n for reason, n in Counter(q["reason"] for q in quarantined).items()}}
    return {"counts": counts, "metrics": {"mean_score": results_lib.mean_score(rows), "checkpoint_steps": steps}}


def report_section(manifest: dict, uri: str, run_folder: str) -> str:
    table = store_for(uri).read_text(join(uri, results_lib.TABLE_FILE)).strip()
    quarantined = manifest.get("counts", {}).get("quarantined", 0)
    return table + (f"\n\n{quarantined} input lines quarantined (`quarantine.jsonl`)." if quarantined else "")
