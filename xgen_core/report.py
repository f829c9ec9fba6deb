"""The run report: one page per run saying what each stage produced, reused or quarantined.

Stages add their own section by registering a function in SECTIONS (stage name -> markdown builder).
"""

from __future__ import annotations

import json
from typing import Callable

from xgen_core import artifacts
from xgen_core.stages import STAGES, run_dir
from xgen_core.storage import join, store_for

REPORT_FILE = "report.md"

SECTIONS: dict[str, Callable[[dict, str, str], str]] = {}  # stage -> fn(manifest, artifact_uri, run_dir) -> md


def _pretrain_section(manifest: dict, uri: str, folder: str) -> str:
    from xgen_core.train.metrics import pretrain_report_section

    return pretrain_report_section(manifest, uri, folder)


SECTIONS["pretrain"] = _pretrain_section
SECTIONS["extend_32k"] = SECTIONS["extend_128k"] = _pretrain_section  # the same loop: losses, LR, loss curve


def run(ctx) -> dict:
    path = write_report(ctx.cfg.root, ctx.run_id)
    ctx.log(f"report: {path}")
    return {"report": path}


def write_report(root: str, run_id: str) -> str:
    folder = run_dir(root, run_id)
    records = stage_records(folder)
    lines = [f"# Run {run_id}", "", "| stage | version | state | artifact |", "|---|---|---|---|"]
    for record in records:
        state = "reused" if record["reused"] else "built"
        lines.append(f"| {record['stage']} | {record['version']} | {state} | `{record['uri']}` |")
    for record in records:
        manifest = artifacts.read_manifest(record["uri"])
        lines += ["", f"## {record['stage']}", ""]
        lines += _counts_table(manifest.get("counts", {}))
        section = SECTIONS.get(record["stage"])
        if section:
            lines += ["", section(manifest, record["uri"], folder)]
    path = join(folder, REPORT_FILE)
    store_for(path).write_text(path, "\n".join(lines) + "\n")
    return path


def stage_records(folder: str) -> list[dict]:
    """The stages this run recorded, in pipeline order."""
    store = store_for(folder)
    by_stage = {}
    for info in store.list_files(join(folder, "stages")):
        record = json.loads(store.read_text(info.uri))
        by_stage[record["stage"]] = record
    return [by_stage[s.name] for s in STAGES if s.name in by_stage]


def _counts_table(counts: dict) -> list[str]:
    if not counts:
        return ["(no counts recorded)"]
    return ["| count | value |", "|---|---|"] + [f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v} |" for k, v in counts.items()]


def _register_sections() -> None:
    from xgen_core.data.data_report import report_section

    SECTIONS["mixture"] = report_section
    SECTIONS["export_hf"] = _lazy_section("xgen_core.interop.export_hf")
    SECTIONS["ruler"] = _lazy_section("xgen_core.evals.ruler")
    SECTIONS["math_eval"] = _lazy_section("xgen_core.evals.math_eval")
    SECTIONS["humaneval"] = _lazy_section("xgen_core.evals.humaneval")
    for stage in ("sft", "dpo", "grpo"):
        SECTIONS[stage] = _lazy_section("xgen_core.posttrain.report", "section")


def _lazy_section(module_name: str, function: str = "report_section") -> Callable[[dict, str, str], str]:
    """A stage's report section function, imported only when the report shows that stage."""
    def section(manifest: dict, uri: str, folder: str) -> str:
        import importlib

        return getattr(importlib.import_module(module_name), function)(manifest, uri, folder)

    return section


_register_sections()
