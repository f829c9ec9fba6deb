"""The `ruler` stage: RULER's synthetic tasks at each configured length, greedy completions from the KV-cache
sampler, RULER's scoring, a task x length heatmap and table per model.

Artifact: results.jsonl + results.md (xgen_core/evals/results.py), predictions.jsonl (every sample's references
and prediction), skipped.jsonl (task x length cells that cannot be built, with the reason), ruler_heatmap.png.
"""

from __future__ import annotations

import io
import json

from xgen_core.evals import results as results_lib
from xgen_core.evals.models import TextModel, model_label, model_uris, training_documents
from xgen_core.evals.ruler_tasks import TASKS, Sample, Skipped, TaskBuilder, build_corpus, metric_for, postprocess
from xgen_core.storage import join, store_for

EVAL = "ruler"
HEATMAP_FILE = "ruler_heatmap.png"


def run(ctx) -> dict:
    settings = ctx.cfg.ruler
    rows, predictions, skipped, steps = [], [], [], {}
    uris = model_uris(ctx)
    for uri in uris:
        model = TextModel.load(uri, settings.batch_size)
        label = model_label(uri)
        steps[label] = model.step
        ctx.log(f"{label} (step {model.step}): {len(settings.tasks)} tasks x lengths {settings.lengths}")
        corpus = build_corpus(training_documents(uri, settings.max_documents, settings.documents), settings.seed)
        builder = TaskBuilder(model.count_tokens, corpus, settings.seed, settings.max_new_tokens)
        model_rows, model_predictions, model_skipped = evaluate(model, builder, settings.tasks, settings.lengths,
                                                                settings.samples, label)
        rows += model_rows
        predictions += model_predictions
        skipped += [{"model": label, "task": s.task, "length": s.length, "reason": s.reason} for s in model_skipped]
        for length in settings.lengths:
            scored = [f"{r['task']} {r['score']:.1f}" for r in model_rows if r["length"] == length]
            ctx.log(f"{label} @ {length}: {', '.join(scored) or 'no task fits'}")
    write_artifact(ctx.output, rows, predictions, skipped)
    return {
        "counts": {"models": len(uris), "results": len(rows), "samples": len(predictions),
                   "skipped_cells": len(skipped)},
        "metrics": {"mean_score": results_lib.mean_score(rows), "checkpoint_steps": steps},
    }


def build_samples(builder: TaskBuilder, tasks: list[str], lengths: list[int], n: int,
                  max_seq_len: int) -> tuple[list[Sample], list[Skipped]]:
    """Every task at every length; cells longer than the model's context or whose prompt cannot fit are skipped."""
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for length in lengths:
        for task in tasks:
            if length > max_seq_len:
                skipped.append(Skipped(task, length, f"beyond the model's {max_seq_len}-token context"))
                continue
            made = builder.samples(task, length, n)
            (skipped.append if isinstance(made, Skipped) else samples.extend)(made)
    return samples, skipped


def evaluate(model: TextModel, builder: TaskBuilder, tasks: list[str], lengths: list[int], n: int,
             label: str) -> tuple[list[dict], list[dict], list[Skipped]]:
    """(result rows, predictions, skipped cells): all samples of all lengths completed in shared batches."""
    samples, skipped = build_samples(builder, tasks, lengths, n, model.max_seq_len)
    completions = model.complete([s.prompt for s in samples], [s.max_new_tokens for s in samples]) if samples else []
    predictions = []
    for sample, completion in zip(samples, completions):
        prediction = postprocess(completion)
        predictions.append({"model": label, "task": sample.task, "length": sample.length, "index": sample.index,
                            "tokens": sample.tokens, "references": sample.references, "prediction": prediction,
                            "score": metric_for(sample.task)(prediction, sample.references)})
    rows = []
    cells = sorted(set((s.task, s.length) for s in samples), key=lambda cell: (list(TASKS).index(cell[0]), cell[1]))
    for task, length in cells:
        scores = [p["score"] for p in predictions if p["task"] == task and p["length"] == length]
        rows.append(results_lib.result_row(EVAL, label, task, length=length, n=len(scores),
                                           score=100 * sum(scores) / len(scores)))
    return rows, predictions, skipped


def write_artifact(folder: str, rows: list[dict], predictions: list[dict], skipped: list[dict]) -> None:
    store = store_for(folder)
    results_lib.write_results(folder, rows, title="RULER (string match, 0-100; — = not built, see skipped.jsonl)")
    for name, records in (("predictions.jsonl", predictions), ("skipped.jsonl", skipped)):
        store.write_text(join(folder, name), "".join(json.dumps(r) + "\n" for r in records))
    store.write_bytes(join(folder, HEATMAP_FILE), heatmap_png(rows, skipped))


def heatmap_png(rows: list[dict], skipped: list[dict]) -> bytes:
    """Tasks down, lengths across, one panel per model; skipped cells hatched grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = list(dict.fromkeys([r["model"] for r in rows] + [s["model"] for s in skipped]))
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows + skipped)]
    lengths = sorted({r["length"] for r in rows + skipped})
    figure, axes = plt.subplots(1, max(1, len(models)), figsize=(2.2 + 1.1 * len(lengths) * max(1, len(models)),
                                                                  1.0 + 0.42 * len(tasks)), squeeze=False)
    for axis, model in zip(axes[0], models or ["(none)"]):
        grid = np.full((len(tasks), len(lengths)), np.nan)
        for r in rows:
            if r["model"] == model:
                grid[tasks.index(r["task"]), lengths.index(r["length"])] = r["score"]
        axis.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        axis.set_facecolor("#dddddd")
        for (i, j), value in np.ndenumerate(grid):
            axis.text(j, i, "—" if np.isnan(value) else f"{value:.0f}", ha="center", va="center", fontsize=8)
        axis.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        axis.set_yticks(range(len(tasks)), tasks)
        axis.set_xlabel("length (tokens)")
        axis.set_title(model, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def report_section(manifest: dict, uri: str, run_folder: str) -> str:
    """The run report's RULER section: the table, the heatmap, how many cells could not be built."""
    store = store_for(uri)
    table = store.read_text(join(uri, results_lib.TABLE_FILE)).strip()
    skipped = manifest.get("counts", {}).get("skipped_cells", 0)
    note = f"\n\n{skipped} task x length cells not built (prompt does not fit; reasons in `skipped.jsonl`)." \
        if skipped else ""
    return f"{table}{note}\n\n![RULER heatmap]({join(uri, HEATMAP_FILE)})"
