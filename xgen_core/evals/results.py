"""What every evaluation stage writes: `results.jsonl` (one row per task x setting, scores 0-100) and the same rows as
a Markdown table (`results.md`), which the run report shows."""

from __future__ import annotations

import json

from xgen_core.storage import join, store_for

RESULTS_FILE = "results.jsonl"
TABLE_FILE = "results.md"


def write_results(out_uri: str, rows: list[dict]) -> dict[str, str]:
    """Write `rows` under `out_uri` as results.jsonl and results.md; returns both URIs."""
    written = {"results": join(out_uri, RESULTS_FILE), "table": join(out_uri, TABLE_FILE)}
    store = store_for(out_uri)
    store.write_text(written["results"], "".join(json.dumps(row) + "\n" for row in rows))
    store.write_text(written["table"], results_table(rows) + "\n")
    return written


def read_results(out_uri: str) -> list[dict]:
    uri = join(out_uri, RESULTS_FILE)
    return [json.loads(line) for line in store_for(uri).read_text(uri).splitlines() if line]


def results_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A Markdown table of `rows`; columns: the given ones, else every key in the order rows first use it."""
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
