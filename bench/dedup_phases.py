"""CPU and wall seconds of each dedup step alone, at one size: each step's output is materialised before the next.

For before/after comparisons of one step on a shared machine, where whole-command wall times move with the load:
the CPU seconds of the process tree (driver, JVM, Python workers) per step are steadier. Not a whole command (the
steps' outputs are checkpointed in between); bench/dedup.py gives those.

    .venv/bin/python bench/dedup.py --docs 100000 --skip-baseline --skip-spark   # writes the input once
    .venv/bin/python bench/dedup_phases.py .bench/dedup/neardup-100000-0.parquet
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from pyspark.sql import functions as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup import dedup_params, process_tree_cpu_seconds, spark_session  # noqa: E402

from xgen_core.data.dedup.candidates import (  # noqa: E402
    EDGE_RECORD, EDGES, candidate_blocks, routed_signatures, verified_edges,
)  # fmt: skip
from xgen_core.data.dedup.components import connected_components  # noqa: E402
from xgen_core.data.dedup.documents import (  # noqa: E402
    SCAN_SCHEMA, blocks_of, chunk_frame, documents_of, scan_chunks, unified_schema,
)  # fmt: skip
from xgen_core.data.dedup.signatures import Signing, write_signature_blocks  # noqa: E402
from xgen_core.data.dedup.write import output_schemas, write_documents  # noqa: E402
from xgen_core.data.sparkio import placement_keys  # noqa: E402


def main() -> None:
    path, cores = sys.argv[1], 2
    output = Path(".bench/dedup/phases-out")
    spark = spark_session(cores, [], True)
    params = dedup_params(pq.ParquetFile(path).metadata.num_rows, cores, 0.5, 128, 5, "fast")
    last = [process_tree_cpu_seconds(), time.perf_counter()]

    def step(name: str) -> None:
        cpu, wall = process_tree_cpu_seconds(), time.perf_counter()
        print(f"{name}: cpu {cpu - last[0]:.1f} s, wall {wall - last[1]:.1f} s", flush=True)
        last[:] = [cpu, wall]

    chunks, schema = unified_schema([path], params.rows_per_chunk)
    keys = placement_keys(spark, cores)
    signing = Signing(params, tuple(keys), tuple(keys))
    scanned = chunk_frame(spark, chunks).mapInArrow(scan_chunks(params, signing), SCAN_SCHEMA).localCheckpoint()
    per_document = documents_of(scanned)
    step("read, check, hash, sign")
    routed = routed_signatures(blocks_of(scanned), params, keys)  # checkpointed
    step("band and sketch blocks routed")
    candidates = candidate_blocks(routed, keys).localCheckpoint()
    candidate_bytes = candidates.filter(F.col("kind") == EDGES).agg(F.sum(F.length("payload"))).first()[0] or 0
    step(f"candidate pairs ({candidate_bytes // EDGE_RECORD.itemsize})")
    checked = verified_edges(candidates, routed, params, keys).localCheckpoint()
    step(f"distinct pairs checked ({checked.count()} pass)")
    roots = connected_components(checked, print).localCheckpoint()
    step(f"connected components ({roots.count()} nodes in clusters)")
    shutil.rmtree(output, ignore_errors=True)
    write_documents(spark, per_document, roots, chunks, output_schemas(schema), str(output), params)
    step("cluster statistics and write")
    write_signature_blocks(blocks_of(scanned), str(output / "signatures"), len(keys), params.num_perm)
    step("signatures stored (run beside the graph steps in run_dedup)")
    spark.stop()


if __name__ == "__main__":
    main()
