"""GRPO step anatomy on the tiny model: rollout tokens/s, optimizer step time, and the rollout share of a step.

    .venv/bin/python bench/grpo_step.py --init ARTIFACT [--profile tiny] [--steps 4] [key=value ...]

ARTIFACT is a trained model's stage artifact (pretrain, sft or dpo; e.g. the dpo artifact `make run` left under
./artifacts). Runs the grpo stage's library function for `--steps` steps into a temporary directory with the
profile's grpo settings; the first step (compilation) is left out of the medians. A rollout is sampling G
completions per prompt with the KV-cache sampler plus scoring them; an update is the old-policy log-probabilities
plus `updates_per_batch` optimizer steps. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from xgen_core.train.host import configure_cpu_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    configure_cpu_training()
    import jax

    from xgen_core.config import load_config
    from xgen_core.posttrain.grpo import grpo
    from xgen_core.train.metrics import read_metrics

    overrides = [f"grpo.steps={args.steps}", f"posttrain_run.eval_every={10**6}", *args.overrides]
    cfg = load_config(args.profile, overrides)
    with tempfile.TemporaryDirectory() as out:
        grpo(args.init, out, cfg.grpo, cfg.train, cfg.train_run.mesh, cfg.posttrain_run,
             expected_model=cfg.section_dump("model"), log=lambda message: None)
        records = [r for r in read_metrics(f"{out}/metrics.jsonl") if "rollout_seconds" in r][1:]
    rollout = statistics.median(r["rollout_seconds"] for r in records)
    update = statistics.median(r["update_seconds"] for r in records)
    tokens = statistics.median(r["rollout_tokens"] for r in records)
    print(json.dumps({
        "device": jax.devices()[0].device_kind, "steps_timed": len(records),
        "rollouts_per_step": cfg.grpo.prompts_per_step * cfg.grpo.group_size,
        "max_new_tokens": cfg.grpo.max_new_tokens, "rollout_tokens_per_step": tokens,
        "rollout_seconds": round(rollout, 3), "rollout_tokens_per_s": round(tokens / rollout, 1),
        "update_seconds": round(update, 3), "updates_per_batch": cfg.grpo.updates_per_batch,
        "optimizer_step_seconds": round(update / cfg.grpo.updates_per_batch, 3),
        "rollout_share": round(rollout / (rollout + update), 3),
    }))


if __name__ == "__main__":
    main()
