"""MinHash signature throughput per batch: xgen_core's fast and datasketch-compatible schemes against rensa 0.5.0.

Signatures of the same generated documents (xgen_core.data.neardup_set) in batches of --batch documents, word
5-gram shingles, 128 permutations (rensa: the same count). Our schemes run in this process; rensa runs in its own
environment (bench/envs/setup.sh rensa) on the same Parquet file, two ways: building each document's list of
shingle strings in Python and updating an RMinHash (what a user script does), and RMinHash alone over shingle lists
built before the clock starts. Each figure is the best of --repeats passes over all batches, wall-clock and CPU.

    .venv/bin/python bench/minhash_throughput.py --docs 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def word_shingles(text: str, ngram: int) -> list[str]:
    words = text.lower().split()
    if len(words) <= ngram:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]


def best_seconds(run, repeats: int) -> dict[str, float]:
    """Best wall-clock and best CPU seconds of `repeats` runs (CPU time is the steadier figure on a shared machine)."""
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
    return {"seconds": wall, "cpu_seconds": cpu}


def batches(texts: list[str], size: int) -> list[list[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def ours(texts: list[str], args) -> dict[str, float]:
    from xgen_core.data.minhash import signatures

    parts = batches(texts, args.batch)
    return {
        f"xgen-{scheme}": best_seconds(
            lambda: [signatures(part, args.ngram, args.num_perm, 1, scheme=scheme) for part in parts], args.repeats
        )
        for scheme in ("fast", "datasketch")
    }


def rensa(texts: list[str], args) -> dict[str, float]:
    from rensa import RMinHash

    def sketch(shingle_lists):
        for shingles in shingle_lists:
            minhash = RMinHash(num_perm=args.num_perm, seed=1)
            minhash.update(shingles)
            minhash.digest()

    prebuilt = [word_shingles(text, args.ngram) for text in texts]
    return {
        "rensa-with-shingle-strings": best_seconds(lambda: sketch(word_shingles(t, args.ngram) for t in texts), args.repeats),
        "rensa-minhash-only": best_seconds(lambda: sketch(prebuilt), args.repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=".bench/dedup")
    parser.add_argument("--rensa-only", metavar="PARQUET", help=argparse.SUPPRESS)  # the run inside rensa's environment
    args = parser.parse_args()

    if args.rensa_only:
        texts = pq.read_table(args.rensa_only, columns=["text"]).column("text").to_pylist()
        print(json.dumps(rensa(texts, args)))
        return

    sys.path.insert(0, str(REPO))
    from xgen_core.data.neardup_set import generate

    path = Path(args.workdir) / f"neardup-{args.docs}-0.parquet"  # the input bench/dedup.py writes, if it ran
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [doc.text for doc in generate(args.docs, seed=0)]}), path)
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    seconds = ours(texts, args)
    rensa_python = REPO / ".bench/envs/rensa/bin/python"
    if rensa_python.exists():
        command = [rensa_python, __file__, "--rensa-only", path, "--ngram", args.ngram, "--num-perm", args.num_perm]
        command += ["--repeats", args.repeats]
        output = subprocess.run([str(part) for part in command], check=True, capture_output=True, text=True).stdout
        seconds.update(json.loads(output.strip().splitlines()[-1]))
    else:
        print(f"no rensa environment ({rensa_python}): run bench/envs/setup.sh rensa")
    for method, value in seconds.items():
        rates = {"docs_per_s": round(len(texts) / value["seconds"]), "docs_per_cpu_s": round(len(texts) / value["cpu_seconds"])}
        print(json.dumps({"method": method, "docs": len(texts), **{k: round(v, 3) for k, v in value.items()}, **rates}))
    fast = seconds["xgen-fast"]
    for method, value in seconds.items():
        if method != "xgen-fast":
            wall, cpu = value["seconds"] / fast["seconds"], value["cpu_seconds"] / fast["cpu_seconds"]
            print(f"speed-up xgen-fast / {method}: {wall:.2f}x wall-clock, {cpu:.2f}x CPU")


if __name__ == "__main__":
    main()
