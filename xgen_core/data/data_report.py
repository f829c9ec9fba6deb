"""The data report of a run: counts in and out per curation stage and rule, each classifier's held-out precision and
recall, the cluster-size histogram, the domain mix of every curriculum stage and each signal's share, as markdown plus PNG plots under the mixture artifact's
report/ folder. The run report embeds it through report.SECTIONS["mixture"].
"""

from __future__ import annotations

import io
import json

from xgen_core import artifacts
from xgen_core.storage import join, store_for

REPORT_DIR = "report"
REPORT_FILE = "data_report.md"
CURATION_STAGES = ("ingest", "dedup", "quality_train", "signals")


def upstream_manifests(signals_uri: str) -> dict[str, dict]:
    """Manifests of the committed curation stages behind a signals artifact, found through each manifest's inputs."""
    found: dict[str, dict] = {}
    pending = [signals_uri]
    while pending:
        uri = pending.pop()
        if not artifacts.is_committed(uri):
            continue
        manifest = artifacts.read_manifest(uri)
        if manifest.get("stage") in CURATION_STAGES and manifest["stage"] not in found:
            found[manifest["stage"]] = manifest
            pending.extend(manifest.get("inputs", {}).values())
    return found


def write(spark, signals_uri: str, output_uri: str, mixture_result: dict) -> str:
    """Write report/data_report.md and its PNGs under output_uri; returns the markdown's URI."""
    manifests = upstream_manifests(signals_uri)
    folder = join(output_uri, REPORT_DIR)
    counts = {stage: m.get("counts", {}) for stage, m in manifests.items()}
    counts["mixture"] = mixture_result["counts"]
    histogram = manifests.get("dedup", {}).get("metrics", {}).get("cluster_size_histogram", [])
    stages = mixture_result["metrics"]["stages"]
    shares = mixture_result["metrics"]["signal_shares"]
    classifiers = manifests.get("quality_train", {}).get("metrics", {})
    plots = {
        "funnel.png": funnel_plot(counts),
        "cluster_sizes.png": cluster_size_plot(histogram),
        "domain_mix.png": domain_mix_plot(stages),
        "signal_shares.png": signal_share_plot(shares, stages),
    }
    for name, png in plots.items():
        store_for(folder).write_bytes(join(folder, name), png)
    markdown = render(counts, classifiers, histogram, stages, shares, list(plots))
    store_for(folder).write_text(join(folder, REPORT_FILE), markdown)
    summary = {"counts": counts, "classifiers": classifiers, "cluster_size_histogram": histogram, "stages": stages,
               "signal_shares": shares}  # fmt: skip
    store_for(folder).write_text(join(folder, "data_report.json"), json.dumps(summary, indent=2))
    return join(folder, REPORT_FILE)


def render(counts: dict, classifiers: dict, histogram: list, stages: dict, shares: dict, images: list[str]) -> str:
    lines = ["### Data report", "", "#### Counts per stage and rule", "", "| stage | count | value |", "|---|---|---|"]
    for stage, stage_counts in counts.items():
        lines += [f"| {stage} | {key} | {value:,} |" for key, value in stage_counts.items() if isinstance(value, int)]
    lines += ["", *classifier_table(classifiers)]
    lines += ["", "#### Cluster sizes", "", "| cluster size | clusters |", "|---|---|"]
    lines += [f"| {size} | {n:,} |" for size, n in histogram]
    lines += ["", "#### Curriculum stages", "", "| stage | tokens (budget) | PL share (target) | quality floor | documents | samples | tokens by source |", "|---|---|---|---|---|---|---|"]
    for name, s in stages.items():
        mix = ", ".join(f"{source}: {tokens / max(1, s['tokens']):.0%}" for source, tokens in s["tokens_by_source"].items())
        lines.append(
            f"| {name} | {s['tokens']:,} ({s['token_budget']:,}) | {s['pl_share']:.2f} ({s['pl_share_target']:.2f}) | "
            f"p{s['min_quality_percentile'] * 100:.0f} | {s['documents']:,} | {s['samples']:,} | {mix} |"
        )
    lines += ["", "#### Signal shares", "", "Each signal's part of the merged weight, over all clusters and over the tokens each stage draws.", ""]
    lines += ["| signal | all clusters | " + " | ".join(stages) + " |", "|---|---|" + "---|" * len(stages)]
    for name, share in shares.items():
        per_stage = " | ".join(f"{s['signal_shares'].get(name, 0.0):.1%}" for s in stages.values())
        lines.append(f"| {name} | {share:.1%} | {per_stage} |")
    lines += [""] + [f"![{image.removesuffix('.png')}]({image})" for image in images]
    return "\n".join(lines) + "\n"


def classifier_table(classifiers: dict) -> list[str]:
    """Held-out precision and recall of each trained fastText classifier (a provided model shows its file)."""
    lines = ["#### Classifiers (fastText, held-out)", "",
             "| classifier | kind | precision | recall | accuracy | held-out docs | trained on (pos / neg) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, m in classifiers.items():
        if m.get("trained"):
            lines.append(
                f"| {name} | {m['kind']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['accuracy']:.3f} | "
                f"{m['n']:,} | {m['n_train_positive']:,} / {m['n_train_negative']:,} |"
            )
        else:
            lines.append(f"| {name} | {m.get('kind', '')} | - | - | - | - | provided: {m.get('model', '')} |")
    return lines


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    _figure().close(figure)
    return buffer.getvalue()


def funnel_plot(counts: dict) -> bytes:
    plt = _figure()
    steps = [
        ("ingest in", counts.get("ingest", {}).get("records_in")),
        ("ingest good", counts.get("ingest", {}).get("records_good")),
        ("dedup docs", counts.get("dedup", {}).get("documents")),
        ("signals out", counts.get("signals", {}).get("documents_out")),
        ("heuristic pass", counts.get("signals", {}).get("heuristic_pass")),
        ("distinct passing", counts.get("mixture", {}).get("passing_variants")),
        ("top-k variants", counts.get("mixture", {}).get("eligible_variants")),
    ]
    steps = [(label, value) for label, value in steps if value is not None]
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.barh([label for label, _ in steps][::-1], [value for _, value in steps][::-1], color="#4878a8")
    axis.set_xlabel("documents")
    axis.set_title("Documents through curation")
    return _png(figure)


def cluster_size_plot(histogram: list) -> bytes:
    plt = _figure()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if histogram:
        sizes, clusters = zip(*histogram)
        axis.bar([str(s) for s in sizes], clusters, color="#6a9f58")
        axis.set_yscale("log")
    axis.set_xlabel("cluster size (documents, exact copies included)")
    axis.set_ylabel("clusters")
    axis.set_title("Duplicate cluster sizes")
    axis.tick_params(axis="x", labelrotation=90, labelsize=7)
    return _png(figure)


def domain_mix_plot(stages: dict) -> bytes:
    plt = _figure()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    sources = sorted({str(source) for s in stages.values() for source in s["tokens_by_source"]})
    bottoms = [0.0] * len(stages)
    for source in sources:
        values = [s["tokens_by_source"].get(source, 0) / max(1, s["tokens"]) for s in stages.values()]
        axis.bar(list(stages), values, bottom=bottoms, label=source)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    axis.set_ylabel("share of tokens")
    axis.set_title("Domain mix per curriculum stage")
    axis.legend(fontsize=7)
    return _png(figure)


def signal_share_plot(shares: dict, stages: dict) -> bytes:
    plt = _figure()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    columns = {"all clusters": shares, **{name: s["signal_shares"] for name, s in stages.items()}}
    width = 0.8 / len(columns)
    for offset, (label, values) in enumerate(columns.items()):
        positions = [i + offset * width for i in range(len(shares))]
        axis.bar(positions, [values.get(name, 0.0) for name in shares], width=width, label=label)
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(shares))], list(shares))
    axis.legend(fontsize=6)
    axis.set_ylabel("share of merged weight")
    axis.set_title("Signal shares")
    axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    return _png(figure)


def report_section(manifest: dict, artifact_uri: str, run_folder: str) -> str:
    """The data report, with image links made absolute, for the run report."""
    folder = join(artifact_uri, REPORT_DIR)
    path = join(folder, REPORT_FILE)
    if not store_for(path).exists(path):
        return "(no data report in this artifact)"
    markdown = store_for(path).read_text(path)
    return markdown.replace("](", f"]({folder}/")
