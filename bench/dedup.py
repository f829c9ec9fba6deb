"""Dedup quality and speed: Spark job (vectorised MinHash, LSH, connected components) vs single-process datasketch.

Generates a labelled near-duplicate set (xgen_core.data.neardup_set), then in the same run:
  1. baseline: datasketch MinHash.bulk + MinHashLSH (insert all, query each, union-find), one Python process;
  2. the Spark dedup job (xgen_core.data.dedup.run_dedup) on local[CORES], session start-up included;
  3. with --datatrove: datatrove 0.10.1's four-stage MinHash pipeline as a whole command in its own environment, on
     the same shingles (whitespace words, lower-cased, 25 buckets x 5 hashes) and CORES workers;
  4. with --rensa: the single-process floor, rensa 0.5.0 MinHash + its LSH + union-find, a whole command;
  5. with --numpy-lsh: xgen_core.data.minhash's signatures in this process, each hash scheme, LSH bands and
     components in numpy (all bucket members linked, and linked only to a sorted neighbour at estimated
     Jaccard >= threshold): the quality of the fast hash scheme against the datasketch-compatible one.
Prints pairwise precision / recall / F1, hard negatives merged, documents lost, docs/s and microseconds per document,
every speed ratio, and the Spark job's peak memory (driver/executor JVM and Python workers, RSS sampled every 0.2 s).
With --refresh it runs only the refresh benchmark: the generated set's last (8th) snapshot added to a dedup output of
the other 7, reusing its signatures, against all 8 from scratch, in one Spark session; prints the time ratio and
whether both outputs are byte-identical.
The separate environments: `bench/envs/setup.sh` (under .bench/envs/, ignored by git).

    .venv/bin/python bench/dedup.py --docs 100000 --cores 2 --datatrove --rensa --numpy-lsh
    .venv/bin/python bench/dedup.py --docs 100000 --cores 2 --refresh

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
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
BENCH_ENVS = REPO / ".bench" / "envs"
sys.path.insert(0, str(REPO))

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
    from xgen_core.data.spark import PYTHON_DAEMON_MODULE
    from xgen_core.data.spark_cds import java_options

    jvm = f"-XX:TieredStopAtLevel=1 -XX:+UseParallelGC -XX:ParallelGCThreads={cores} -XX:CICompilerCount=1"
    return [
        f"spark.driver.extraJavaOptions={jvm} {java_options(class_sharing)}".strip(),
        "spark.sql.adaptive.enabled=false",
        f"spark.python.daemon.module={PYTHON_DAEMON_MODULE}",
    ]


def spark_session(cores: int, conf: list[str], class_sharing: bool):
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

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
    return spark


def dedup_params(rows: int, cores: int, threshold: float, num_perm: int, ngram: int, hash_scheme: str):
    """The pipeline's dedup section (top-k, ranking, Jaccard check as configured), with the benchmark's settings and
    one chunk per core; seed 1 is the seed the datasketch baseline uses."""
    from xgen_core.config import load_config

    settings = {
        "ngram": ngram,
        "num_perm": num_perm,
        "seed": 1,
        "threshold": threshold,
        "rows_per_chunk": -(-rows // cores),
        "hash_scheme": hash_scheme,
    }
    return load_config("tiny", [f"dedup.{key}={value}" for key, value in settings.items()]).dedup


def log_with_cpu(message: str) -> None:
    print(f"{message} [cpu {process_tree_cpu_seconds():.1f} s]", flush=True)


def run_spark(
    path: Path,
    output: Path,
    cores: int,
    threshold: float,
    num_perm: int,
    ngram: int,
    conf: list[str],
    class_sharing: bool,
    hash_scheme: str = "fast",
) -> dict[str, str]:
    from xgen_core.data.dedup import run_dedup

    spark = spark_session(cores, conf, class_sharing)
    params = dedup_params(pq.ParquetFile(path).metadata.num_rows, cores, threshold, num_perm, ngram, hash_scheme)
    counts = run_dedup(spark, str(path), str(output), params, log=log_with_cpu)
    print(f"spark cpu seconds (driver, JVM, Python workers): {process_tree_cpu_seconds():.1f}")
    spark.stop()
    table = pq.read_table(output / "data", columns=["id", "cluster_id"])
    print(f"spark counts: {json.dumps(counts)}")
    return dict(zip(table.column("id").to_pylist(), table.column("cluster_id").to_pylist()))


def split_last_snapshot(path: Path, folder: Path) -> tuple[Path, Path]:
    """The input as two files: every snapshot but the last (the corpus so far) and the last one (the new crawl)."""
    table = pq.read_table(path)
    last = max(table.column("snapshot").to_pylist())
    is_last = pa.compute.equal(table.column("snapshot"), last)
    earlier, new = folder / "earlier-snapshots.parquet", folder / "new-snapshot.parquet"
    pq.write_table(table.filter(pa.compute.invert(is_last)), earlier, row_group_size=4096)
    pq.write_table(table.filter(is_last), new, row_group_size=4096)
    return earlier, new


def same_bytes(left: Path, right: Path) -> bool:
    files = sorted(p.relative_to(left) for p in left.rglob("*.parquet"))
    return files == sorted(p.relative_to(right) for p in right.rglob("*.parquet")) and all(
        (left / f).read_bytes() == (right / f).read_bytes() for f in files
    )


def run_refresh(path: Path, workdir: Path, args) -> None:
    """A weekly refresh: the 8th snapshot added to a 7-snapshot corpus whose dedup output exists, reusing its
    signatures, against a dedup of all 8 from scratch; both in one Spark session, each timed from call to output."""
    from xgen_core.data.dedup import run_dedup

    folder = workdir / "refresh"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    earlier, new = split_last_snapshot(path, folder)
    spark = spark_session(args.cores, args.conf, not args.no_class_sharing)
    rows = pq.ParquetFile(path).metadata.num_rows
    params = dedup_params(rows, args.cores, args.threshold, args.num_perm, args.ngram, args.hash_scheme)
    both = [str(earlier), str(new)]
    start = time.perf_counter()
    run_dedup(spark, [str(earlier)], str(folder / "week-7"), params, log=log_with_cpu)
    print(f"the 7-snapshot corpus deduplicated (not timed in the ratio): {time.perf_counter() - start:.2f} s")
    timings = {}
    runs = [("from-scratch", None), ("incremental", str(folder / "week-7"))]
    for name, previous in reversed(runs) if args.incremental_first else runs:
        start = time.perf_counter()
        counts = run_dedup(spark, both, str(folder / name), params, previous=previous, log=log_with_cpu)
        timings[name] = time.perf_counter() - start
        print(json.dumps({"refresh": name, "docs": rows, "seconds": round(timings[name], 2), "counts": counts}))
    spark.stop()
    identical = same_bytes(folder / "from-scratch", folder / "incremental")
    print(f"incremental output equals from-scratch output byte for byte: {identical}")
    ratio = timings["incremental"] / timings["from-scratch"]
    print(f"refresh: incremental {timings['incremental']:.2f} s / from scratch {timings['from-scratch']:.2f} s = {ratio:.2f}")


class PeakMemory:
    """Peak resident memory of this process's Spark descendants, sampled every 0.2 s in a thread: the driver JVM
    (in local mode also the executor) and the sum over its Python workers."""

    def __init__(self):
        import threading

        self.jvm = self.python_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.2):
            jvm = workers = 0
            for process in me.children(recursive=True):
                try:
                    rss = process.memory_info().rss
                    if process.name() == "java":
                        jvm += rss
                    else:
                        workers += rss
                except psutil.NoSuchProcess:
                    pass
            self.jvm, self.python_workers = max(self.jvm, jvm), max(self.python_workers, workers)

    def line(self) -> str:
        gib = 1 << 30
        return f"peak memory: driver/executor JVM {self.jvm / gib:.2f} GiB, Python workers {self.python_workers / gib:.2f} GiB (RSS)"


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
        "us_per_doc": round(seconds / len(docs) * 1e6, 1),
        "precision": round(scores["precision"], 5), "recall": round(scores["recall"], 5), "f1": round(scores["f1"], 5),
        "hard_negatives_merged": negatives, "docs_lost": lost,
    }  # fmt: skip
    print(json.dumps(line))
    return line


def bench_env_python(name: str) -> Path:
    python = BENCH_ENVS / name / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no {name} bench environment at {python.parent.parent}: run bench/envs/setup.sh {name}")
    return python


def run_command(command: list, log: Path) -> float:
    """Run a whole baseline command, its output to `log`; wall-clock seconds from start to exit (CPU seconds printed)."""
    import psutil

    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([str(part) for part in command], stdout=out, stderr=subprocess.STDOUT)
        cpu_of = tree_cpu_while_running(psutil.Process(process.pid), process)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"{command[1]} failed (exit {process.returncode}); its log: {log}")
    print(f"{Path(command[1]).stem} cpu seconds (its process tree, sampled every 0.2 s): {sum(cpu_of.values()):.1f}")
    return seconds


def tree_cpu_while_running(root, process: subprocess.Popen) -> dict:
    """pid -> last seen user + system CPU seconds of every process in the tree, until the root exits.

    Sampled, because pool workers started through a fork server are not children the root waits for (their CPU
    never reaches RUSAGE_CHILDREN); a worker's last < 0.2 s can be missed.
    """
    import psutil

    cpu_of: dict = {}
    while process.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            members = []
        for member in members:
            try:
                times = member.cpu_times()
                cpu_of[member.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    return cpu_of


def write_shards(path: Path, folder: Path, n_files: int) -> Path:
    """The input as n_files Parquet files (datatrove gives one signature rank per file, not per row group)."""
    marker = folder / "_complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        table = pq.read_table(path, columns=["id", "text"])
        per_file = -(-table.num_rows // n_files)
        for index in range(n_files):
            pq.write_table(table.slice(index * per_file, per_file), folder / f"part-{index:05d}.parquet", row_group_size=4096)
        marker.touch()
    return folder


def run_datatrove(path: Path, workdir: Path, cores: int, bands: int, rows: int, ngram: int) -> tuple[dict[str, str], float]:
    """datatrove's MinHash dedup as a whole command; (cluster labels from its kept and removed documents, seconds)."""
    python = bench_env_python("datatrove")
    shards = write_shards(path, workdir / f"datatrove-input-{path.stem}-{cores}", cores)
    work = workdir / "datatrove-work"
    shutil.rmtree(work, ignore_errors=True)
    command = [python, REPO / "bench/baselines/datatrove_minhash.py", shards, work, "--tasks", cores]
    command += ["--buckets", bands, "--rows", rows, "--ngram", ngram, "--seed", 1]
    seconds = run_command(command, workdir / "datatrove.log")
    labels = {}
    for part in ("kept", "removed"):
        table = pq.read_table(work / part, columns=["id", "metadata"]).to_pydict()
        for doc_id, metadata in zip(table["id"], table["metadata"]):
            cluster = metadata["minhash_cluster_id"]
            labels[doc_id] = doc_id if cluster == -1 else f"datatrove-{cluster}"
    return labels, seconds


def run_rensa(path: Path, workdir: Path, threshold: float, bands: int, rows: int, ngram: int) -> tuple[dict[str, str], float]:
    """rensa MinHash + its LSH + union-find in one process, as a whole command; (cluster labels, seconds)."""
    output = workdir / "rensa-labels.parquet"
    command = [bench_env_python("rensa"), REPO / "bench/baselines/rensa_minhash.py", path, output]
    command += ["--threshold", threshold, "--bands", bands, "--rows", rows, "--ngram", ngram, "--seed", 1]
    seconds = run_command(command, workdir / "rensa.log")
    table = pq.read_table(output).to_pydict()
    return dict(zip(table["id"], table["cluster"])), seconds


def run_numpy_lsh(path: Path, threshold: float, num_perm: int, ngram: int, scheme: str) -> dict[str, dict[str, str]]:
    """Cluster labels from xgen_core's signatures (`scheme`) with LSH bands and components in numpy, in this process.

    Two edge rules over the same buckets: "all" links every bucket member (what datasketch's LSH + union-find does);
    "verified" sorts each band by key and links a member to its sorted neighbour in the same bucket only when their
    estimated Jaccard reaches the threshold.
    """
    from xgen_core.data import minhash

    table = pq.read_table(path, columns=["id", "text"])
    ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
    start = time.perf_counter()
    parts = [minhash.signatures(texts[i : i + 8192], ngram, num_perm, 1, scheme=scheme) for i in range(0, len(texts), 8192)]
    sigs, has_shingles = np.vstack([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    print(f"numpy-lsh {scheme}: signatures of {len(texts)} documents in {time.perf_counter() - start:.2f} s")
    bands, rows = minhash.lsh_params(threshold, num_perm)
    nodes = np.flatnonzero(has_shingles)
    keys = minhash.band_keys(sigs[nodes], bands, rows)
    left, right = [], []
    for band in range(bands):
        order = np.argsort(keys[:, band], kind="stable")
        same = keys[order[1:], band] == keys[order[:-1], band]
        left.append(nodes[order[:-1][same]])
        right.append(nodes[order[1:][same]])
    left, right = np.concatenate(left), np.concatenate(right)
    verified = minhash.estimated_jaccard(sigs[left], sigs[right]) >= threshold
    return {
        rule: dict(zip(ids, (ids[root] for root in component_roots(len(ids), left[keep], right[keep]))))
        for rule, keep in (("all", np.ones(len(left), dtype=bool)), ("verified", verified))
    }


def component_roots(n_nodes: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """One representative node per connected component of the edges (min-label hooking with pointer jumping)."""
    root = np.arange(n_nodes)
    while True:
        low = np.minimum(root[left], root[right])
        hooked = root.copy()
        np.minimum.at(hooked, left, low)
        np.minimum.at(hooked, right, low)
        hooked = hooked[hooked]
        if np.array_equal(hooked, root):
            return root
        root = hooked


def print_ratios(results: list[dict]) -> None:
    """Speed of the Spark job against every whole-command baseline of the run (docs/s ratio, > 1: Spark is faster).

    The in-process numpy-lsh checks write nothing and are not whole commands: no ratio for them.
    """
    spark = [r for r in results if r["method"].startswith("spark")]
    for ours in spark:
        for other in results:
            if other is not ours and not other["method"].startswith("numpy-lsh"):
                print(f"speed-up {ours['method']} / {other['method']}: {ours['docs_per_s'] / other['docs_per_s']:.2f}x")


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
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--datatrove", action="store_true", help="also run datatrove 0.10.1 (bench/envs/setup.sh datatrove)")
    parser.add_argument("--rensa", action="store_true", help="also run the rensa 0.5.0 floor (bench/envs/setup.sh rensa)")
    parser.add_argument("--numpy-lsh", action="store_true", help="also check both hash schemes in-process")
    parser.add_argument("--hash-scheme", choices=["fast", "datasketch"], default="fast", help="the Spark job's MinHash")
    parser.add_argument(
        "--refresh", action="store_true", help="only the refresh benchmark: the last snapshot added to the others"
    )
    parser.add_argument(
        "--incremental-first", action="store_true", help="with --refresh: time the incremental run before the other"
    )
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
    if args.refresh:
        run_refresh(input_path, workdir, args)
        return

    results = []
    if not args.skip_baseline:
        start = time.perf_counter()
        cpu_start = time.process_time()
        labels = run_baseline(input_path, args.threshold, args.num_perm, args.ngram)
        print(f"baseline cpu seconds: {time.process_time() - cpu_start:.1f}")
        results.append(report("datasketch-single-process", labels, docs, time.perf_counter() - start))

    from xgen_core.data.minhash import lsh_params

    bands, rows = lsh_params(args.threshold, args.num_perm)
    if args.datatrove:
        labels, seconds = run_datatrove(input_path, workdir, args.cores, bands, rows, args.ngram)
        results.append(report(f"datatrove-0.10.1-{args.cores}-workers", labels, docs, seconds))
    if args.rensa:
        labels, seconds = run_rensa(input_path, workdir, args.threshold, bands, rows, args.ngram)
        results.append(report("rensa-0.5.0-single-process", labels, docs, seconds))
    if args.numpy_lsh:
        for scheme in ("fast", "datasketch"):
            start = time.perf_counter()
            by_rule = run_numpy_lsh(input_path, args.threshold, args.num_perm, args.ngram, scheme)
            seconds = time.perf_counter() - start
            for rule, labels in by_rule.items():
                results.append(report(f"numpy-lsh-{scheme}-{rule}", labels, docs, seconds))

    if not args.skip_spark:
        output = workdir / "spark-out"
        shutil.rmtree(output, ignore_errors=True)
        start = time.perf_counter()
        with PeakMemory() as memory:
            labels = run_spark(
                input_path,
                output,
                args.cores,
                args.threshold,
                args.num_perm,
                args.ngram,
                args.conf,
                not args.no_class_sharing,
                args.hash_scheme,
            )
        results.append(report(f"spark-local[{args.cores}]", labels, docs, time.perf_counter() - start))
        print(memory.line())
    print_ratios(results)


if __name__ == "__main__":
    main()
