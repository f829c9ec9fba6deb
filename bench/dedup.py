"""Dedup quality and speed: Spark job (vectorised MinHash, LSH, connected components) vs single-process datasketch.

Generates a labelled near-duplicate set (xgen_core.data.neardup_set), then in the same run:
  1. baseline: datasketch MinHash.bulk + MinHashLSH (insert all, query each, union-find), one Python process;
  2. the Spark dedup job (xgen_core.data.dedup.run_dedup) on local[CORES], session start-up included.
Prints pairwise precision / recall / F1, hard negatives merged, documents lost, and docs/s for both.

    .venv/bin/python bench/dedup.py --docs 100000 --cores 2

Spark settings for a short local job (override with --conf): C1-only JIT and parallel GC with as many threads as
cores (a fresh JVM otherwise spends tens of CPU-seconds in the C2 compiler), adaptive query execution off (its
re-planning between stages costs more than it saves on 100k documents), and the driver JVM maps the class-data-
sharing archive `make env` builds (xgen_core/data/spark_cds.py; `--no-class-sharing` to start without it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xgen_core.data.neardup_set import generate, merged_hard_negatives, true_pairs_f1  # noqa: E402


def write_input(docs, path: Path) -> None:
    table = pa.table(
        {
            "id": [d.id for d in docs],
            "text": [d.text for d in docs],
            "url": [d.url for d in docs],
            "snapshot": [d.snapshot for d in docs],
        }
    )
    pq.write_table(table, path, row_group_size=4096)


def run_baseline(path: Path, threshold: float, num_perm: int, ngram: int) -> dict[str, str]:
    """Cluster labels from plain datasketch: one process, the library's bulk MinHash and its LSH index."""
    from datasketch import MinHash, MinHashLSH

    from xgen_core.data.minhash import word_shingles

    table = pq.read_table(path, columns=["id", "text"])
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    sketches = MinHash.bulk((word_shingles(text, ngram) for text in texts), num_perm=num_perm, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    with lsh.insertion_session() as session:
        for doc_id, sketch in zip(ids, sketches):
            session.insert(doc_id, sketch, check_duplication=False)
    parent = {doc_id: doc_id for doc_id in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for doc_id, sketch in zip(ids, sketches):
        for other in lsh.query(sketch):
            a, b = find(doc_id), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {doc_id: find(doc_id) for doc_id in ids}


def short_local_job_conf(cores: int, class_sharing: bool) -> list[str]:
    from xgen_core.data.spark_cds import java_options

    jvm = f"-XX:TieredStopAtLevel=1 -XX:+UseParallelGC -XX:ParallelGCThreads={cores} -XX:CICompilerCount=1"
    return [f"spark.driver.extraJavaOptions={jvm} {java_options(class_sharing)}".strip(), "spark.sql.adaptive.enabled=false"]


def run_spark(
    path: Path, output: Path, cores: int, threshold: float, num_perm: int, ngram: int, conf: list[str], class_sharing: bool
) -> dict[str, str]:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    from xgen_core.config import load_config
    from xgen_core.data.dedup import run_dedup

    builder = (
        SparkSession.builder.master(f"local[{cores}]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.driver.memory", "4g")
    )
    for item in [*short_local_job_conf(cores, class_sharing), *conf]:
        key, _, value = item.partition("=")
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    print(f"session up [cpu {process_tree_cpu_seconds():.1f} s]")
    spark.sparkContext.setLogLevel("ERROR")
    rows = pq.ParquetFile(path).metadata.num_rows  # one chunk per core
    # The pipeline's dedup section (top-k, ranking, Jaccard check as configured), with the benchmark's settings;
    # seed 1 is the seed the datasketch baseline uses.
    settings = {"ngram": ngram, "num_perm": num_perm, "seed": 1, "threshold": threshold, "rows_per_chunk": -(-rows // cores)}
    params = load_config("tiny", [f"dedup.{key}={value}" for key, value in settings.items()]).dedup
    counts = run_dedup(spark, str(path), str(output), params, log=lambda m: print(f"{m} [cpu {process_tree_cpu_seconds():.1f} s]"))
    print(f"spark cpu seconds (driver, JVM, Python workers): {process_tree_cpu_seconds():.1f}")
    spark.stop()
    table = pq.read_table(output / "data", columns=["id", "cluster_id"])
    print(f"spark counts: {json.dumps(counts)}")
    return dict(zip(table.column("id").to_pylist(), table.column("cluster_id").to_pylist()))


def process_tree_cpu_seconds() -> float:
    """CPU time used so far by this process and all its descendants (the JVM and its Python workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            # children_*: finished Python workers, reaped by their parent
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def report(name: str, predicted: dict[str, str], docs, seconds: float) -> dict:
    truth = {d.id: d.true_cluster for d in docs}
    scores = true_pairs_f1(predicted, truth)
    lost = len(set(truth) - set(predicted))
    negatives = merged_hard_negatives(predicted, docs) if not lost else -1
    line = {
        "method": name, "docs": len(docs), "seconds": round(seconds, 2), "docs_per_s": round(len(docs) / seconds),
        "precision": round(scores["precision"], 5), "recall": round(scores["recall"], 5), "f1": round(scores["f1"], 5),
        "hard_negatives_merged": negatives, "docs_lost": lost,
    }  # fmt: skip
    print(json.dumps(line))
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=".bench/dedup")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting")
    parser.add_argument(
        "--no-class-sharing", action="store_true", help="start the driver JVM without the class archive `make env` builds"
    )
    args = parser.parse_args()

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    docs = generate(args.docs, seed=args.seed)
    input_path = workdir / f"neardup-{args.docs}-{args.seed}.parquet"
    if not input_path.exists():
        write_input(docs, input_path)
    print(f"input: {input_path} ({len(docs)} docs, {len({d.true_cluster for d in docs})} true clusters)")

    results = []
    if not args.skip_baseline:
        start = time.perf_counter()
        cpu_start = time.process_time()
        labels = run_baseline(input_path, args.threshold, args.num_perm, args.ngram)
        print(f"baseline cpu seconds: {time.process_time() - cpu_start:.1f}")
        results.append(report("datasketch-single-process", labels, docs, time.perf_counter() - start))

    output = workdir / "spark-out"
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    labels = run_spark(
        input_path, output, args.cores, args.threshold, args.num_perm, args.ngram, args.conf, not args.no_class_sharing
    )
    results.append(report(f"spark-local[{args.cores}]", labels, docs, time.perf_counter() - start))
    if len(results) == 2:
        print(f"speed-up spark / datasketch: {results[1]['docs_per_s'] / results[0]['docs_per_s']:.2f}x")


if __name__ == "__main__":
    main()
