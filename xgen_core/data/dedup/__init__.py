"""Exact + fuzzy deduplication that annotates instead of dropping (paper section 2.2).

One module per step; `run_dedup` below chains them (nothing but small counts reaches the driver, and the texts
never enter the JVM):
  documents   Python tasks read the input chunks, quarantine bad rows and hash each text (exact key = graph node)
  signatures  MinHash per distinct text, vectorised per batch, in the scan task: they leave it as packed blocks bound
              for the LSH buckets, the check and signatures/ (never as rows); reused from a previous run for
              unchanged snapshots
  candidates  LSH band buckets -> candidate pairs inside each bucket -> each distinct pair's MinHash-estimated Jaccard
              check (a join by hand of numpy records packed in blocks: pairs meet their src's signature sketch, then
              their dst's)
  components  connected components of the checked pairs (each partition contracted to stars, then large-star /
              small-star until every component is a star)
  clusters    per cluster: size, snapshots, domains, first/last seen; top-k distinct variants kept, the rest flagged
              (Spark windows over one exchange by cluster)
  write       Python tasks write each chunk's documents with their annotations (and its quarantined rows), in order
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from xgen_core.config import DedupConfig
from xgen_core.data import prepared_layout
from xgen_core.data.dedup.candidates import graph_edges
from xgen_core.data.dedup.components import connected_components
from xgen_core.data.dedup.documents import (
    SCAN_SCHEMA, blocks_of, chunk_frame, documents_of, parquet_inputs, scan_chunks, sign_new_snapshots, unified_schema,
)  # fmt: skip
from xgen_core.data.dedup.signatures import (
    Signing, reusable_snapshots, signatures_of, snapshot_fingerprints, store_signatures, stored_count,
)  # fmt: skip
from xgen_core.data.dedup.write import output_schemas, write_documents
from xgen_core.data.sparkio import placement_keys, released_checkpoints
from xgen_core.storage import join, normalize_uri, store_for


def run_dedup(
    spark: SparkSession,
    input_uri: str | list[str],
    output_uri: str,
    params: DedupConfig,
    previous: str | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Deduplicate `input_uri` (one URI or several) into `output_uri`/{data, quarantine, signatures, signature_index}; returns counts.

    `previous` is an earlier dedup output: its signatures are reused for snapshots whose contents are unchanged.
    The texts are read by Python tasks, never shipped through Spark: once to check, hash and sign them, once to
    write them out with their annotations. A refresh signs them in a read of its own, of only the chunks that hold
    a snapshot it cannot reuse (it knows which once every text is hashed).
    """
    with released_checkpoints(spark):
        return deduplicated(spark, input_uri, output_uri, params, previous, log)


def deduplicated(spark, input_uri, output_uri: str, params: DedupConfig, previous: str | None, log) -> dict:
    """run_dedup's steps (its checkpoints stay in memory until it returns)."""
    started = time.perf_counter()

    def done(step: str) -> None:
        log(f"dedup: {step} ({time.perf_counter() - started:.1f} s)")

    scratch = join(output_uri, "_input")
    chunks, input_schema = unified_schema(parquet_inputs(spark, input_uri, scratch), params.rows_per_chunk)
    descriptors = chunk_frame(spark, chunks)

    partitions = int(spark.conf.get("spark.sql.shuffle.partitions"))
    n_files = spark.sparkContext.defaultParallelism
    signing = Signing(params, tuple(placement_keys(spark, partitions)), tuple(placement_keys(spark, n_files)))
    # Every text is read and hashed once here, and signed unless this is a refresh (it does not know yet which
    # snapshots it reuses): the signatures leave the scan as blocks bound for the graph and for signatures/.
    scanned = descriptors.mapInArrow(scan_chunks(params, None if previous else signing), SCAN_SCHEMA).localCheckpoint()
    per_document = documents_of(scanned)
    done("documents hashed")
    hashable = per_document.filter(F.col("quarantine_reason").isNull())
    fingerprints = snapshot_fingerprints(hashable, params)
    if previous:
        fingerprints = fingerprints.localCheckpoint()
        reused = reusable_snapshots(spark, fingerprints, previous)
        signing = dataclasses.replace(signing, reused=frozenset(reused))
        fresh, read_to_sign = sign_new_snapshots(spark, hashable, chunks, signing)
        done(f"snapshots not reused signed ({read_to_sign} documents read again)")
    else:
        reused, fresh, read_to_sign = [], blocks_of(scanned), sum(chunk.row_count for chunk in chunks)
    with ThreadPoolExecutor(max_workers=1) as background:
        # Nothing below reads the stored signatures: Spark runs their write in the gaps of the graph jobs.
        stored = background.submit(store_signatures, fresh, fingerprints, output_uri, previous, reused, signing)
        # Fresh signatures from the scan, reused ones from the previous output.
        edges = graph_edges(signatures_of(fresh, spark, previous, reused, signing), params, list(signing.graph_keys))
        roots = connected_components(edges, log)
        done("connected components")
        schemas = output_schemas(input_schema)
        counts = write_documents(spark, per_document, roots, chunks, schemas, output_uri, params)
        done("documents written")
        stored.result()
    done(f"signatures written (reused for {len(reused)} snapshot(s))")
    store_for(output_uri).delete_prefix(normalize_uri(scratch))
    counts["snapshots_reusing_signatures"] = len(reused)
    counts["texts_signed"] = stored_count(fresh, params.num_perm)
    counts["documents_read_to_sign"] = read_to_sign
    return counts


def cluster_size_histogram(spark: SparkSession, output_uri: str) -> list[tuple[int, int]]:
    """(cluster size, number of clusters) pairs for the report."""
    data = spark.read.parquet(f"{output_uri}/data").filter("cluster_rank = 1")
    rows = data.groupBy("cluster_size").count().orderBy("cluster_size").collect()
    return [(int(row.cluster_size), int(row["count"])) for row in rows]


def run(ctx) -> dict:
    """The `dedup` stage: reads every snapshot partition of the ingest artifact, those an append references included
    (or --input), and writes data/, quarantine/, signatures/."""
    inputs = ctx.external_inputs or [ctx.inputs["ingest"]]
    source = [folder for uri in inputs for folder in prepared_layout.documents_of(uri)]
    previous = ctx.cfg.dedup.reuse_signatures_from or None
    counts = run_dedup(ctx.spark(), source, ctx.output, ctx.cfg.dedup, previous, ctx.log)
    histogram = cluster_size_histogram(ctx.spark(), ctx.output)
    return {"counts": counts, "metrics": {"cluster_size_histogram": histogram}}
