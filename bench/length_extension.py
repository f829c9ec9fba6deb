"""Does length extension buy long-context retrieval? The three-model experiment of paper 3.4 at tiny scale.

(a) the pretrained model (trained at `pack.seq_len`, RoPE base of the preset);
(b) a control: `extend_32k` run at the ORIGINAL length and RoPE base on the same extension data, same steps and
    tokens a step;
(c) the extended model: `extend_32k` at `--seq-len` with the stage's larger RoPE base.

Both (b) and (c) are the real `extend_32k` stage (run through the stage table: content-versioned artifacts under
--root, reused when they exist), differing only in the config overrides printed below.

With `--teach-steps` > 0 both start from a retrieval-taught model instead of (a): the same `extend_32k` stage run
first at the ORIGINAL length and RoPE base on a mixture whose `--teach-retrieval-share` of characters are retrieval
documents that fit the original length (their answer in the same row as the needle), its final parameters the
`pretrain` input of (b) and (c) (`--input pretrain=URI`). The tiny model pretrained for 100 steps learns no
retrieval in a few hundred steps of a 0.5 share with documents cut into rows, so without it (b) and (c) both score
~0 everywhere and length extension has nothing to extend; row "(t) taught" is that starting point. (1,400 teaching
steps on retrieval documents alone were not enough either: the models find the needle but copy only its first
token; see docs/benchmarks.md and the leading-digits diagnostic below. `--teach-copy-share` adds copy documents,
`extend_32k.copy_share`: key-value lines whose multi-token values are asked back, which teach the copying.)
Their extension mixture
includes synthetic retrieval documents (RULER's niah generators with their answers, `extend_32k.retrieval_share`,
keys and values from the stage's seed): at tiny scale no corpus document is long enough to need retrieval. The
three are then scored by RULER's niah tasks (the `ruler` stage's own evaluate, its evaluation seed, haystacks from
held-out documents) at the original length and at 4x and 8x of it, every model read at the longest length, and by
their held-out loss on pretraining's held-out rows at the original length.

    .venv/bin/python bench/length_extension.py --root artifacts   # after `make run`: the pipeline is reused

Prints the niah table per model and length, and the ratios the issue asks for: (c) - (b) at 4x, (c) - (b) at the
original length, (c)'s held-out loss at the original length over (a)'s.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from xgen_core.config import load_config
from xgen_core.evals.models import TextModel, training_documents
from xgen_core.evals.ruler import evaluate
from xgen_core.evals.ruler_tasks import TaskBuilder, build_corpus
from xgen_core.stages import run_pipeline, run_stage
from xgen_core.storage import join, store_for
from xgen_core.tokens.packing import inputs_and_targets
from xgen_core.tokens.shards import STAGES_FILE
from xgen_core.train.loop import heldout_rows

LEADING_DIGITS = 2
NIAH = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="artifacts", help="artifact root (make run's is reused)")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--factor", type=int, default=4, help="extended length = factor x the pretraining length")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tokens-per-step", type=int, default=4096)
    parser.add_argument("--peak-lr", type=float, default=1e-3)
    parser.add_argument("--retrieval-share", type=float, default=0.5)
    parser.add_argument("--retrieval-min-tokens", type=int, default=96)
    parser.add_argument("--tasks", default=",".join(NIAH))
    parser.add_argument("--samples", type=int, default=20, help="RULER samples per task and length")
    parser.add_argument("--eval-factors", default="1,4,8",
                        help="RULER lengths as multiples of the pretraining length")
    parser.add_argument("--heldout-rows", type=int, default=64)
    parser.add_argument("--whole-documents", action=argparse.BooleanOptionalAction, default=True,
                        help="extension data keeps a document that fits a row in one row (extend_32k.whole_documents)")
    parser.add_argument("--json", help="also write the table, sample counts and artifact URIs here")
    parser.add_argument("--teach-steps", type=int, default=0,
                        help="steps of the retrieval-teaching phase at the original length (0: (b), (c) start from (a))")
    parser.add_argument("--teach-from", help="artifact the teaching phase starts from (default: pretrain's)")
    parser.add_argument("--teach-retrieval-share", type=float, default=0.75)
    parser.add_argument("--teach-peak-lr", type=float, default=2e-3)
    parser.add_argument("--teach-copy-share", type=float, default=0.0,
                        help="share of the teaching mixture's characters from copy documents (extend_32k.copy_share)")
    parser.add_argument("--copy-share", type=float, default=0.0,
                        help="copy documents' share in the (b) and (c) mixture (the same for both)")
    parser.add_argument("--copy-pairs", type=int, default=6, help="key-value lines per copy document, at most")
    parser.add_argument("--copy-repeats", type=int, default=0, help="verbatim repeats of a copy document's listing")
    parser.add_argument("--teach-only", action="store_true",
                        help="stop after the teaching phase and evaluate (t) alone (a probe before the full run)")
    return parser.parse_args()


def extension_overrides(args, seq_len: int, long_len: int, rope_theta: float | None, steps: int | None = None,
                        peak_lr: float | None = None, retrieval_share: float | None = None,
                        copy_share: float | None = None) -> list[str]:
    """extend_32k at `seq_len`; the data (long documents, retrieval documents up to `long_len`) is the same for both.
    `steps`, `peak_lr`, `retrieval_share`, `copy_share` default to the extension's (the teaching phase sets its
    own)."""
    steps = args.steps if steps is None else steps
    rows = args.tokens_per_step // seq_len
    theta = [f"extend_32k.rope_theta={rope_theta}"] if rope_theta else []
    return [
        f"extend_32k.seq_len={seq_len}", f"extend_32k.max_seq_len={seq_len}", *theta,
        f"extend_32k.tokens={steps * rows * seq_len}", f"extend_32k.batch_size={rows}",
        "extend_32k.grad_accum_steps=1", f"extend_32k.peak_lr={args.peak_lr if peak_lr is None else peak_lr}",
        f"extend_32k.warmup_steps={max(1, steps // 20)}",
        f"extend_32k.retrieval_share={args.retrieval_share if retrieval_share is None else retrieval_share}",
        f"extend_32k.retrieval_tasks=[{args.tasks}]", f"extend_32k.retrieval_min_tokens={args.retrieval_min_tokens}",
        f"extend_32k.retrieval_max_tokens={long_len}", f"extend_32k.long_doc_tokens={2 * long_len}",
        "extend_32k.attention_impl=xla", f"extend_32k.whole_documents={str(args.whole_documents).lower()}",
        f"extend_32k.copy_share={args.copy_share if copy_share is None else copy_share}",
        f"extend_32k.copy_pairs={args.copy_pairs}",
        f"extend_32k.copy_repeats={args.copy_repeats}",
    ]


def teach_retrieval(args, base: list[str], original: int, theta: float) -> str:
    """The retrieval-teaching phase: extend_32k at the original length and RoPE base, retrieval documents that fit a
    row; its artifact URI (the starting point of (b) and (c))."""
    overrides = extension_overrides(args, original, original, theta, steps=args.teach_steps,
                                    peak_lr=args.teach_peak_lr, retrieval_share=args.teach_retrieval_share,
                                    copy_share=args.teach_copy_share)
    start = [f"pretrain={args.teach_from}"] if args.teach_from else []
    print(f"(t) taught: extend_32k with {' '.join(overrides)}{' from ' + start[0] if start else ''}", flush=True)
    return run_stage(load_config(args.profile, base + overrides), "extend_32k", "bench-length-extension",
                     explicit_inputs=start).uri


def heldout_loss(model: TextModel, pack_uri: str, count: int) -> float:
    """Mean next-token loss (nats) on the pretraining pack's first held-out rows."""
    packed = json.loads(store_for(pack_uri).read_text(join(pack_uri, STAGES_FILE)))
    batch = inputs_and_targets(heldout_rows(pack_uri, packed, count))
    trained = model.trained
    logits = trained.model.apply({"params": trained.params}, jnp.asarray(batch["inputs"]),
                                 jnp.asarray(batch["positions"]), jnp.asarray(batch["segment_ids"]))
    logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = np.asarray(jnp.take_along_axis(logprobs, jnp.asarray(batch["targets"])[..., None], axis=-1)[..., 0])
    return float(-(picked * batch["weights"]).sum() / batch["weights"].sum())


def niah_scores(uri: str, cfg, tasks: list[str], lengths: list[int],
                samples: int) -> tuple[dict[int, dict], TextModel]:
    """length -> {"score": niah average 0-100, "se": its standard error, "n": samples, task: that task's score}."""
    model = TextModel.load(uri, cfg.ruler.batch_size, max_seq_len=max(lengths))
    corpus = build_corpus(training_documents(uri, cfg.ruler.max_documents, ""), cfg.ruler.seed)
    builder = TaskBuilder(model.count_tokens, corpus, cfg.ruler.seed, cfg.ruler.max_new_tokens)
    _, predictions, skipped = evaluate(model, builder, tasks, lengths, samples, uri)
    if skipped:
        raise SystemExit(f"RULER cells could not be built: {skipped}")
    for length in lengths:
        first = next(p for p in predictions if p["length"] == length)
        print(f"  e.g. @ {length} {first['task']}: {first['prediction'][:60]!r} for {first['references']}", flush=True)
    return {length: cell_summary([p for p in predictions if p["length"] == length], tasks) for length in lengths}, model


def leading_digits_found(prediction: dict) -> float:
    """A diagnostic, not RULER's metric: the completion starts with the first LEADING_DIGITS characters of each
    reference (the needle's first token or so; chance ~1% for 7-digit numbers). It shows whether the model still
    finds the needle at a length when it cannot copy the whole value."""
    completion = prediction["prediction"]
    return float(np.mean([completion.startswith(ref[:LEADING_DIGITS]) for ref in prediction["references"]]))


def cell_summary(predictions: list[dict], tasks: list[str]) -> dict:
    """Every task has the same sample count, so the mean over samples is RULER's mean over tasks."""
    scores = np.array([100 * p["score"] for p in predictions])
    leading = np.array([100 * leading_digits_found(p) for p in predictions])
    summary = {"score": float(scores.mean()), "se": float(scores.std(ddof=1) / np.sqrt(len(scores))), "n": len(scores),
               "leading": float(leading.mean()), "leading_se": float(leading.std(ddof=1) / np.sqrt(len(leading)))}
    for task in tasks:
        summary[task] = float(np.mean([100 * p["score"] for p in predictions if p["task"] == task]))
    return summary


def main() -> None:
    args = parse_args()
    if args.teach_only and not args.teach_steps:
        raise SystemExit("--teach-only needs --teach-steps")
    base = [f"root={args.root}"]
    cfg = load_config(args.profile, base)
    started = time.perf_counter()
    outcomes = {o.stage: o for o in run_pipeline(cfg, "bench-length-extension", until="pretrain")}
    original = cfg.pack.seq_len
    pretrained_theta = cfg.model.spec().rope_theta
    long = original * args.factor
    models = {"(a) pretrained": outcomes["pretrain"].uri}
    start = []
    if args.teach_steps:
        models["(t) taught"] = teach_retrieval(args, base, original, pretrained_theta)
        start = [f"pretrain={models['(t) taught']}"]
    extensions = [("(b) control", original, pretrained_theta), ("(c) extended", long, None)]
    if args.teach_only:
        del models["(a) pretrained"]
        extensions = []
    for label, seq_len, theta in extensions:
        overrides = extension_overrides(args, seq_len, long, theta)
        print(f"{label}: extend_32k with {' '.join(overrides)}{' from ' + start[0] if start else ''}", flush=True)
        extended = run_stage(load_config(args.profile, base + overrides), "extend_32k", "bench-length-extension",
                             explicit_inputs=start)
        models[label] = extended.uri
    trained_s = time.perf_counter() - started

    tasks = args.tasks.split(",")
    lengths = [original * int(f) for f in args.eval_factors.split(",")]
    table, losses = {}, {}
    for label, uri in models.items():
        table[label], model = niah_scores(uri, cfg, tasks, lengths, args.samples)
        losses[label] = heldout_loss(model, outcomes["pack"].uri, args.heldout_rows)
        print(f"{label} {uri}: niah {table[label]} held-out loss @ {original} {losses[label]:.4f}", flush=True)

    print(f"\nRULER niah average ({', '.join(tasks)}; {args.samples} samples each), 0-100 (± standard error over "
          f"the {len(tasks) * args.samples} samples of a cell), and held-out loss at {original} tokens; {args.steps} "
          f"extension steps of {args.tokens_per_step} tokens, retrieval share {args.retrieval_share}"
          + (f"; teaching phase {args.teach_steps} steps, retrieval share {args.teach_retrieval_share}, copy "
             f"share {args.teach_copy_share}" if args.teach_steps else "")
          + f"; {trained_s:.0f} s to train, {time.perf_counter() - started:.0f} s in all\n")
    header = " | ".join(f"@ {n} ({n // original}x)" for n in lengths)
    print(f"| model | {header} | held-out loss @ {original} |")
    print("|---|" + "---:|" * (len(lengths) + 1))
    for label in models:
        cells = " | ".join(f"{table[label][n]['score']:.1f} ± {table[label][n]['se']:.1f}" for n in lengths)
        print(f"| {label} | {cells} | {losses[label]:.4f} |")
    print(f"\nleading {LEADING_DIGITS} digits of the answer found (diagnostic, not RULER's metric), 0-100:\n"
          f"| model | {header} |")
    print("|---|" + "---:|" * len(lengths))
    for label in models:
        cells = " | ".join(f"{table[label][n]['leading']:.1f} ± {table[label][n]['leading_se']:.1f}" for n in lengths)
        print(f"| {label} | {cells} |")
    print(f"\nper task:\n| model | task | " + " | ".join(f"@ {n}" for n in lengths) + " |")
    print("|---|---|" + "---:|" * len(lengths))
    for label in models:
        for task in tasks:
            print(f"| {label} | {task} | " + " | ".join(f"{table[label][n][task]:.0f}" for n in lengths) + " |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"models": models, "niah": table, "heldout_loss": losses, "args": vars(args)}, out, indent=1)
    if args.teach_only:
        return
    extended, control = table["(c) extended"], table["(b) control"]
    print()
    for factor in (4, 1):
        n = original * factor
        if n in lengths:
            gap = extended[n]["score"] - control[n]["score"]
            se = np.hypot(extended[n]["se"], control[n]["se"])
            print(f"(c) - (b) at {factor}x ({n}): {gap:+.1f} ± {se:.1f} points; leading digits "
                  f"{extended[n]['leading'] - control[n]['leading']:+.1f} ± "
                  f"{np.hypot(extended[n]['leading_se'], control[n]['leading_se']):.1f}")
    reference = "(t) taught" if "(t) taught" in losses else "(a) pretrained"
    for label in ("(c) extended", "(b) control"):
        print(f"held-out loss at {original}: {label} / (a) pretrained = "
              f"{losses[label] / losses['(a) pretrained']:.3f}, / {reference} = {losses[label] / losses[reference]:.3f}")


if __name__ == "__main__":
    main()
