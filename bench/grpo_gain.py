"""What GRPO buys: held-out verifiable reward before and after N steps from a given init model.

    .venv/bin/python bench/grpo_gain.py --init ARTIFACT [--profile tiny] [--steps 40] [--out DIR] [key=value ...]

ARTIFACT is the model GRPO starts from (in a pipeline, the dpo artifact; e.g. the one `make run` left under
./artifacts). Runs the grpo stage's library function for `--steps` steps with the profile's grpo settings (plus
overrides, e.g. grpo.peak_lr=3e-4) into a temporary directory, or into --out to keep the artifact. The held-out
reward is the stage's own evaluation: G samples at the rollout temperature for each of the held-out prompts, which
no training step sees, scored by the same reward registry (math-verify). Evaluated before the first step and after
the last one; prints one JSON line with both and the gain.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from xgen_core.train.host import configure_cpu_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", help="keep the grpo artifact here (default: a temporary directory)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    configure_cpu_training()

    from xgen_core.config import load_config
    from xgen_core.posttrain.grpo import grpo
    from xgen_core.train.metrics import read_metrics

    overrides = [f"grpo.steps={args.steps}", f"posttrain_run.eval_every={args.steps}",
                 f"posttrain_run.checkpoint_every={args.steps}", *args.overrides]
    cfg = load_config(args.profile, overrides)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or scratch
        started = time.perf_counter()
        result = grpo(args.init, out, cfg.grpo, cfg.train, cfg.train_run.mesh, cfg.posttrain_run,
                      expected_model=cfg.section_dump("model"), log=lambda message: None)
        seconds = time.perf_counter() - started
        records = read_metrics(f"{out}/metrics.jsonl")
    trained = [r for r in records if "reward_mean" in r]
    before, after = (result["metrics"][f"heldout_reward_{k}"] for k in ("before", "after"))
    tenth = max(1, len(trained) // 10)
    print(json.dumps({
        "init": args.init, "steps": args.steps, "prompts_per_step": cfg.grpo.prompts_per_step,
        "group_size": cfg.grpo.group_size, "peak_lr": cfg.grpo.peak_lr,
        "updates_per_batch": cfg.grpo.updates_per_batch, "max_operand": cfg.grpo.max_operand,
        "heldout_prompts": result["counts"]["heldout_prompts"],
        "heldout_reward_before": round(before, 4), "heldout_reward_after": round(after, 4),
        "heldout_gain": round(after - before, 4),
        "train_reward_first_tenth": round(sum(r["reward_mean"] for r in trained[:tenth]) / tenth, 4),
        "train_reward_last_tenth": round(sum(r["reward_mean"] for r in trained[-tenth:]) / tenth, 4),
        "groups_without_signal": round(sum(r["groups_without_signal"] for r in trained) / len(trained), 3),
        "seconds": round(seconds, 1),
    }))


if __name__ == "__main__":
    main()
