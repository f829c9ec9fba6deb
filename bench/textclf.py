"""fastText classifier throughput: training and scoring docs/s per core, as quality_train and signals run them.

Documents come from the sample corpus generator (code, prose, math, web); the classifier is the `code` domain
classifier of the pipeline (code against every other source), trained with `textclf.train` (fasttext.train_supervised
on the config's fastText settings) on 80% of the documents and scored with `textclf.scores` (fastText's multi-line
predict, one process, batches of --batch documents, as a Spark task scores one Arrow batch).

    .venv/bin/python bench/textclf.py --per-domain 5000 --epoch 20 --repeats 3

Training docs/s counts every document of every epoch; per core divides by min(thread, CPU count), the cores the
trainer can use (fastText 0.9.2 needs thread >= 10 to initialise its weights, so on a 2-core machine its threads
share 2 cores). Scoring runs in one thread: its docs/s is per core.

--numpy-baseline FILE times a module with the numpy trainer that main used before (for the record:
`git show 3f77149:xgen_core/data/textclf.py > /tmp/textclf_numpy.py`) on the same documents, single-threaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xgen_core.config import load_config  # noqa: E402
from xgen_core.data import textclf  # noqa: E402
from xgen_core.data.sample_corpus import build_corpus  # noqa: E402


def corpus(per_domain: int) -> tuple[list[str], list[str]]:
    cfg = load_config("tiny").sample_corpus.model_copy(
        update={"code_docs": per_domain, "prose_docs": per_domain, "math_docs": per_domain, "web_docs": per_domain}
    )
    docs = build_corpus(cfg)
    return [d.text for d in docs if d.source.startswith("code")], [d.text for d in docs if not d.source.startswith("code")]


def bench_fasttext(positives, negatives, settings, repeats: int, batch: int) -> dict:
    cut_pos, cut_neg = int(len(positives) * 0.8), int(len(negatives) * 0.8)
    train_docs = cut_pos + cut_neg
    runs = []
    for repeat in range(repeats):
        started = time.perf_counter()
        model = textclf.train(positives[:cut_pos], negatives[:cut_neg], settings, "__label__positive", seed=repeat)
        train_s = time.perf_counter() - started
        texts = positives + negatives
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            textclf.scores(model, texts[i : i + batch], "__label__positive")
        score_s = time.perf_counter() - started
        held = textclf.evaluate(model, positives[cut_pos:], negatives[cut_neg:], "__label__positive")
        runs.append({"train_s": train_s, "score_s": score_s, "precision": held["precision"], "recall": held["recall"]})
    cores = min(settings.thread, os.cpu_count() or 1)
    best_train = min(r["train_s"] for r in runs)
    best_score = min(r["score_s"] for r in runs)
    return {
        "train_docs": train_docs,
        "epoch": settings.epoch,
        "train_s": [round(r["train_s"], 3) for r in runs],
        "train_docs_per_s_per_core": round(train_docs * settings.epoch / best_train / cores, 1),
        "train_cores": cores,
        "scored_docs": len(positives) + len(negatives),
        "score_s": [round(r["score_s"], 3) for r in runs],
        "score_docs_per_s_per_core": round((len(positives) + len(negatives)) / best_score, 1),
        "held_out_precision": [round(r["precision"], 4) for r in runs],
        "held_out_recall": [round(r["recall"], 4) for r in runs],
    }


def bench_numpy(path: str, positives, negatives, settings) -> dict:
    spec = importlib.util.spec_from_file_location("textclf_numpy", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["textclf_numpy"] = module
    spec.loader.exec_module(module)
    cut_pos, cut_neg = int(len(positives) * 0.8), int(len(negatives) * 0.8)
    texts, labels = positives[:cut_pos] + negatives[:cut_neg], [1] * cut_pos + [0] * cut_neg
    numpy_settings = module.TrainSettings(settings.dim, settings.bucket, settings.epoch, 1.0, 0)
    started = time.perf_counter()
    model = module.train(texts, labels, numpy_settings)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    model.scores(positives + negatives)
    score_s = time.perf_counter() - started
    return {
        "train_s": round(train_s, 3),
        "train_docs_per_s_per_core": round(len(texts) * settings.epoch / train_s, 1),
        "score_docs_per_s_per_core": round((len(positives) + len(negatives)) / score_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-domain", type=int, default=5000, help="sample-corpus documents per domain")
    parser.add_argument("--epoch", type=int, default=None, help="fastText epochs (default: base.yaml's)")
    parser.add_argument("--thread", type=int, default=None, help="fastText threads (default: base.yaml's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024, help="documents per predict call")
    parser.add_argument("--numpy-baseline", default="", help="module file with main's former numpy trainer")
    args = parser.parse_args()
    settings = load_config("tiny").quality_train.fasttext
    updates = {k: v for k, v in {"epoch": args.epoch, "thread": args.thread}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    positives, negatives = corpus(args.per_domain)
    mean_chars = sum(map(len, positives + negatives)) / len(positives + negatives)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "commit": commit,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(),
        "fasttext": settings.model_dump(),
        "documents": {"positive": len(positives), "negative": len(negatives), "mean_chars": round(mean_chars)},
        "fastText": bench_fasttext(positives, negatives, settings, args.repeats, args.batch),
    }
    if args.numpy_baseline:
        result["numpy_baseline"] = bench_numpy(args.numpy_baseline, positives, negatives, settings)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
