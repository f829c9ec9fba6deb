"""Per-step metrics to JSON lines and TensorBoard, MFU, device peak FLOP/s, and a loss-spike alarm."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device by jax device_kind prefix (vendor data sheets).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v5p": 459e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v6 lite": 918e12,
    "TPU v4": 275e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def measure_matmul_flops(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """Best achieved FLOP/s of a square matmul, f32 inputs and bf16 inputs, both accumulating in f32."""
    results = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jnp.ones((size, size), dtype)
        matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
        matmul(a, a).block_until_ready()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            best = min(best, time.perf_counter() - start)
        results[name] = 2 * size**3 / best
    return results


def device_peak_flops(configured: float | None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if configured:
        return float(configured), "config"
    kind = jax.devices()[0].device_kind
    for prefix, flops in PEAK_FLOPS_BY_DEVICE_KIND.items():
        if kind.startswith(prefix):
            return flops, f"datasheet:{kind}"
    return max(measure_matmul_flops().values()), f"measured-matmul:{kind}"


class LossSpikeAlarm:
    """Flags a loss more than `factor` times its exponential moving average (after `warmup` steps)."""

    def __init__(self, factor: float, warmup: int, decay: float = 0.95):
        self.factor, self.warmup, self.decay = factor, warmup, decay
        self.average, self.seen = None, 0

    def update(self, loss: float) -> bool:
        self.seen += 1
        spiking = self.average is not None and self.seen > self.warmup and loss > self.factor * self.average
        if not spiking:
            self.average = loss if self.average is None else self.decay * self.average + (1 - self.decay) * loss
        return spiking

    def get_state(self) -> dict:
        return {"average": self.average, "seen": self.seen}

    def set_state(self, state: dict) -> None:
        self.average, self.seen = state["average"], state["seen"]


class MetricsWriter:
    """`metrics.jsonl` (one object per step) plus TensorBoard scalars, in a local run directory."""

    def __init__(self, directory: str | Path, resume_after_step: int):
        from tensorboardX import SummaryWriter

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self._drop_steps_after(resume_after_step)
        self.file = self.path.open("a")
        self.tensorboard = SummaryWriter(str(self.directory / "tensorboard"), purge_step=resume_after_step + 1)

    def _drop_steps_after(self, step: int) -> None:
        """A resumed run recomputes the steps after its checkpoint; their old lines go."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def flush(self) -> None:
        self.file.flush()
        self.tensorboard.flush()

    def close(self) -> None:
        self.file.close()
        self.tensorboard.close()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def plot_losses(records: list[dict], stage_starts: dict[str, int], path: str) -> None:
    """Training and held-out loss against step, curriculum stage starts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.plot([r["step"] for r in records], [r["loss"] for r in records], label="train", color="black", lw=1)
    heldout = [r for r in records if r.get("heldout_loss") is not None]
    axis.plot([r["step"] for r in heldout], [r["heldout_loss"] for r in heldout], "o-", label="held-out", color="C1")
    for name, start in stage_starts.items():
        axis.axvline(start, color="grey", linestyle=":")
        axis.text(start, axis.get_ylim()[1], name, fontsize=7, va="top")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats/token)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def epochs_table(stages: list[dict]) -> list[str]:
    """How much of each curriculum stage's packed data the run used (> 1 epoch: cycled; < 1: cut)."""
    lines = ["| curriculum stage | steps trained / planned | token budget | packed tokens | packed rows "
             "| epochs used | epochs planned |", "|---|---|---|---|---|---|---|"]
    for stage in stages:
        lines.append(f"| {stage['name']} | {stage['steps_used']:,} / {stage['steps']:,} | {stage['tokens']:,} "
                     f"| {stage['packed_tokens']:,} | {stage['packed_rows']:,} | {stage['epochs_used']:.2f} "
                     f"| {stage['epochs_planned']:.2f} |")
    return lines


def pretrain_report_section(manifest: dict, uri: str, run_folder: str) -> str:
    """Markdown for the run report: losses against the unigram baseline, throughput, the two plots."""
    from xgen_core.storage import join, store_for

    store = store_for(uri)
    summary = json.loads(store.read_text(join(uri, "summary.json")))
    records = [json.loads(line) for line in store.read_text(join(uri, "metrics.jsonl")).splitlines() if line]
    mfus = sorted(r["mfu"] for r in records[1:]) or [records[-1]["mfu"]]
    lines = [
        f"Trained {summary['last_step']} of {summary['total_steps']} steps ({records[-1]['tokens']:,} tokens).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| held-out loss | {summary['heldout_loss']:.3f} |",
        f"| unigram-entropy baseline | {summary['unigram_baseline_loss']:.3f} |",
        f"| final train loss | {records[-1]['loss']:.3f} |",
        f"| loss-spike alarms | {sum(bool(r['loss_spike']) for r in records)} |",
        f"| median MFU (peak {summary['peak_flops_per_device'] / 1e12:.2f} TFLOP/s, {summary['peak_flops_source']}) "
        f"| {mfus[len(mfus) // 2]:.1%} |",
        "",
        *epochs_table(summary["stages"]),
        "",
        f"![learning rate]({join(uri, 'lr_schedule.png')})",
        "",
        f"![loss]({join(uri, 'loss.png')})",
    ]
    return "\n".join(lines)
