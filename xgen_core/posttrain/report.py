"""Run-report sections of sft, dpo and grpo: held-out measures before and after, and each stage's curves."""

from __future__ import annotations

import json

from xgen_core.storage import join, store_for

# (stage, curves drawn from metrics.jsonl: (train key, held-out key, axis label))
CURVES = {
    "sft": ("loss", "heldout_assistant_loss", "assistant-token loss (nats)"),
    "dpo": ("train_pref_acc", "pref_acc", "preference accuracy"),
    "grpo": ("reward_mean", "heldout_reward_mean", "mean verifiable reward"),
}


def plot_curves(records: list[dict], train_key: str, heldout_key: str, label: str, path: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2))
    trained = [r for r in records if train_key in r]
    axis.plot([r["step"] for r in trained], [r[train_key] for r in trained], label="train batch", color="black", lw=1)
    heldout = [r for r in records if r.get(heldout_key) is not None]
    axis.plot([r["step"] for r in heldout], [r[heldout_key] for r in heldout], "o-", label="held-out", color="C1")
    axis.set_xlabel("step")
    axis.set_ylabel(label)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    store_for(path).write_bytes(path, buffer.getvalue())


def section(manifest: dict, uri: str, run_folder: str) -> str:
    stage = manifest["stage"]
    store = store_for(uri)
    records = [json.loads(line) for line in store.read_text(join(uri, "metrics.jsonl")).splitlines() if line]
    train_key, heldout_key, label = CURVES[stage]
    plot = join(run_folder, f"{stage}_curves.png")
    plot_curves(records, train_key, heldout_key, label, plot)
    heldout = [r for r in records if heldout_key in r]
    first, last = heldout[0], heldout[-1]
    keys = sorted(k for k in last if k.startswith(heldout_key.split("_")[0]) or k.startswith("heldout_")
                  or k.startswith("pref_acc"))
    lines = [f"Init: `{manifest.get('inputs', {})}`. Held-out measures before the first step and after step "
             f"{last['step']}:", "", "| measure | before | after |", "|---|---|---|"]
    lines += [f"| {k} | {first.get(k, float('nan')):.4f} | {last[k]:.4f} |" for k in keys
              if isinstance(last.get(k), float)]
    if stage == "grpo":
        trained = [r for r in records if "reward_mean" in r]
        lines += ["", "| step | reward_mean | pass_rate | response_length | clip_fraction | entropy |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['reward_mean']:.3f} | {r['pass_rate']:.3f} | {r['response_length']:.1f} "
                  f"| {r['clip_fraction']:.3f} | {r['entropy']:.3f} |" for r in trained]
    lines += ["", f"![{stage}]({plot})"]
    return "\n".join(lines)
