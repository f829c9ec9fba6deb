"""Evaluation results: one record per task x setting, written as `results.jsonl` and a Markdown table.

Every eval stage (ruler, math_eval, humaneval, ...) writes its scores through this module so the run report and
later comparisons read one format:

    rows = [result_row("math_eval", "pretrain-3f2a", "arithmetic", n=32, score=12.5)]
    write_results(ctx.output, rows)          # results.jsonl + results.md in the artifact
    read_results(uri)                        # the rows back, in file order

A row is {"eval", "model", "task", "length" (only where the setting is a context length), "n", "score"} with the
score in 0-100; `extra` fields (e.g. "metric": "pass@10") follow them. `markdown_table` renders rows as one table:
a task column, one column per model x setting.
"""

from __future__ import annotations

import json
import math
from typing import Any

from xgen_core.errors import XgenError
from xgen_core.storage import join, store_for

RESULTS_FILE = "results.jsonl"
TABLE_FILE = "results.md"
REQUIRED_KEYS = ("eval", "model", "task", "n", "score")
TABLE_HEADING = "### Eval: "  # `make run` prints every table under such a heading from the run report


def result_row(eval_name: str, model: str, task: str, *, n: int, score: float, length: int | None = None,
               **extra: Any) -> dict:
    """One result record; `score` is a percentage (0-100) over `n` scored samples."""
    if n < 0:
        raise XgenError(f"{eval_name}/{task}: n must be >= 0, got {n}")
    if not (isinstance(score, (int, float)) and math.isfinite(score) and 0 <= score <= 100):
        raise XgenError(f"{eval_name}/{task}: score must be a number in [0, 100], got {score!r}")
    row: dict[str, Any] = {"eval": eval_name, "model": model, "task": task}
    if length is not None:
        row["length"] = int(length)
    row.update({"n": int(n), "score": round(float(score), 2), **extra})
    return row


def write_results(folder: str, rows: list[dict], title: str | None = None, table: str | None = None) -> dict[str, str]:
    """`results.jsonl` and `results.md` (`table`, else `markdown_table(rows)`, under "### Eval: {title}" when given)
    in `folder`."""
    for row in rows:
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise XgenError(f"result row without {missing}: {row}")
    results_uri, table_uri = join(folder, RESULTS_FILE), join(folder, TABLE_FILE)
    store = store_for(folder)
    store.write_text(results_uri, "".join(json.dumps(row, sort_keys=False) + "\n" for row in rows))
    table = markdown_table(rows) if table is None else table
    store.write_text(table_uri, (f"{TABLE_HEADING}{title}\n\n" if title else "") + table + "\n")
    return {"results": results_uri, "table": table_uri}


def read_results(folder: str) -> list[dict]:
    uri = join(folder, RESULTS_FILE)
    return [json.loads(line) for line in store_for(uri).read_text(uri).splitlines() if line.strip()]


def _setting(row: dict) -> str:
    """The column a row lands in: its model, and its context length where it has one."""
    return f"{row['model']} @ {row['length']}" if "length" in row else row["model"]


def markdown_table(rows: list[dict]) -> str:
    """Tasks down, model x setting across (lengths in ascending order), scores with one decimal, n in a last
    column when every cell of a task row has the same n (else next to each score)."""
    if not rows:
        return "(no results)"
    tasks = list(dict.fromkeys(row["task"] for row in rows))
    ordered = sorted(rows, key=lambda row: (row["model"], row.get("length", -1)))
    settings = list(dict.fromkeys(_setting(row) for row in ordered))
    cells = {(row["task"], _setting(row)): row for row in rows}
    lines = ["| task | " + " | ".join(settings) + " | n |", "|---|" + "---:|" * (len(settings) + 1)]
    for task in tasks:
        task_rows = [cells.get((task, setting)) for setting in settings]
        counts = {row["n"] for row in task_rows if row}
        same_n = len(counts) == 1
        shown = ["—" if row is None else f"{row['score']:.1f}" + ("" if same_n else f" (n={row['n']})")
                 for row in task_rows]
        lines.append(f"| {task} | " + " | ".join(shown) + f" | {counts.pop() if same_n else '—'} |")
    return "\n".join(lines)


def mean_score(rows: list[dict]) -> float:
    """Unweighted mean of the rows' scores (each task x setting counts once, as RULER averages tasks)."""
    return round(sum(row["score"] for row in rows) / len(rows), 2) if rows else 0.0


def results_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as they are, one table line each (for evals with several rows per task and model, e.g. pass@k per
    sampling setting); columns: the given ones, else every key in the order rows first use it."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(column, row.get(column, "")) for column in columns) + " |")
    return "\n".join(lines)


def _cell(column: str, value) -> str:
    if column == "score" and isinstance(value, (int, float)):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")
