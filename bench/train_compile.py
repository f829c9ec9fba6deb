"""The docs/benchmarks.md table of ahead-of-time TPU compiles: one row per (profile, stage) on a slice.

    .venv/bin/python bench/train_compile.py --topology v5p:8x8x16 --profiles xgen-small-4b xgen-small-9b
    .venv/bin/python bench/train_compile.py --reports 4b.json 9b.json   # rows from `xgen train compile --json`

Each compile of a 1,024-chip slice takes minutes of CPU (three compiles per row: the step, then 1- and 2-layer
copies for the FLOPs count), so the second form turns saved reports into the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

GiB = 1024**3
HEADER = ("| profile | stage | slice | mesh | memory per chip (args / temps / total) | fits | compiled FLOPs/step | "
          "model FLOPs/step | ratio | step at 50% MFU | tokens/s/chip at 50% MFU | compile |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def row(report: dict) -> str:
    memory = report["bytes"]
    mesh = " x ".join(f"{axis} {size}" for axis, size in report["mesh"].items())
    flops, model = report["flops_per_step"], report["model_flops_per_step"]
    ratio = f"{flops / model:.3f}" if flops else "-"
    return (f"| `{report['profile']}` | {report['stage']} | {report['topology']} ({report['devices']} chips) | {mesh} "
            f"| {memory['arguments'] / GiB:.2f} / {(memory['temporaries'] or 0) / GiB:.2f} / "
            f"{memory['total'] / GiB:.2f} GiB of {report['hbm_bytes'] / GiB:.0f} | {'yes' if report['fits'] else 'no'} "
            f"| {f'{flops:.3e}' if flops else '-'} | {model:.3e} | {ratio} | {report['step_seconds']['mfu_50']:.2f} s "
            f"| {report['tokens_per_s_per_chip']['mfu_50']:,.0f} | {report['compile_seconds']:.0f} s |")


def program_rows(report: dict) -> list[str]:
    """One row per further program of the stage (GRPO's sampler): memory with the training state left resident,
    the model's FLOPs of a whole call (XLA's compiled count covers one trip of its loops, so it is not compared)."""
    rows = []
    for name, program in report.get("programs", {}).items():
        memory = program["bytes"]
        rows.append(
            f"| `{report['profile']}` | {report['stage']}: {name} | {report['topology']} ({report['devices']} chips) "
            f"| as above | {memory['arguments'] / GiB:.2f} / {(memory['temporaries'] or 0) / GiB:.2f} / "
            f"{program['total_with_resident'] / GiB:.2f} GiB of {report['hbm_bytes'] / GiB:.0f} (total with "
            f"{program['resident_bytes'] / GiB:.2f} GiB of optimizer state resident) "
            f"| {'yes' if program['fits'] else 'no'} | - | {program['model_flops_per_call']:.3e} per call | - "
            f"| {program['step_seconds']['mfu_50']:.3f} s | {program['tokens_per_s_per_chip']['mfu_50']:,.0f} "
            f"| {program['compile_seconds']:.0f} s |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="v5p:8x8x16")
    parser.add_argument("--stage", default="pretrain")
    parser.add_argument("--profiles", nargs="*", default=["xgen-small-4b", "xgen-small-9b"])
    parser.add_argument("--reports", nargs="*", help="JSON reports of `xgen train compile --json` instead of compiling")
    args = parser.parse_args()
    if args.reports:
        reports = [json.loads(Path(path).read_text().strip().splitlines()[-1]) for path in args.reports]
    else:
        from xgen_core.config import load_config
        from xgen_core.train.compile import compile_stage

        reports = [compile_stage(load_config(profile, []), profile, args.stage, args.topology)
                   for profile in args.profiles]
    print(HEADER)
    for report in reports:
        print(row(report))
        for line in program_rows(report):
            print(line)


if __name__ == "__main__":
    main()
