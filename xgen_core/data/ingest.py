"""Ingest: crawl files (JSONL, Parquet, WET, WARC) into the raw-prepared Parquet layer (paper section 2.1).

Spark distributes input files over executors; each file is streamed through a reader, every record comes out
either normalised (`data/snapshot=<snapshot>/`, one partition per crawl snapshot) or quarantined with its reason
(`quarantine/`). The stage fails, uncommitted, only when the quarantined share exceeds `ingest.max_bad_fraction`.
With `ingest.append_to` the earlier artifact's partitions are referenced, not copied (see prepared_layout).
"""

from __future__ import annotations

from typing import Iterator

from xgen_core.config import IngestConfig
from xgen_core.data.prepared_layout import (
    DATA_DIR, QUARANTINE_DIR, appended_layout, own_layout, partition_path, read_layout,
)  # fmt: skip
from xgen_core.data.normalize import (
    content_hash,
    default_language_model,
    identify_language,
    normalize_text,
    parse_time,
    registered_domain,
    stable_doc_id,
)
from xgen_core.data.readers import (
    TRUNCATED, BadRecord, RawRecord, html_extractor, input_kind, is_data_file, read_file,
)  # fmt: skip
from xgen_core.errors import InputError
from xgen_core.storage import iter_files, join, normalize_uri

COLUMNS = (
    ("doc_id", "string"),
    ("text", "string"),
    ("url", "string"),
    ("domain", "string"),
    ("snapshot", "string"),
    ("crawl_time", "timestamp"),
    ("language", "string"),
    ("language_score", "double"),
    ("content_hash", "string"),
    ("source", "string"),
    ("source_id", "string"),
    ("input_file", "string"),
    ("ordinal", "long"),
    ("reason", "string"),
    ("raw", "string"),
    ("byte_offset", "long"),
)
GOOD_COLUMNS = [name for name, _ in COLUMNS[:11]]
QUARANTINE_COLUMNS = ["input_file", "ordinal", "reason", "raw", "byte_offset"]


def run(ctx) -> dict:
    cfg = ctx.cfg.ingest
    earlier = read_layout(cfg.append_to, "ingest.append_to=") if cfg.append_to else None  # checked before work
    roots = ctx.external_inputs or [ctx.inputs["sample_corpus"]]
    files = list_input_files(roots)
    ctx.log(f"{len(files)} input files under {', '.join(roots)}")
    require_html_extractor(files)
    counts, truncated, by_snapshot = ingest(ctx.spark(), files, ctx.output, cfg)
    ctx.log(f"{counts['records_good']} records kept, {counts['records_quarantined']} quarantined")
    for cut in truncated:
        ctx.log(f"{cut['input_file']} was cut short: {cut['raw']}")
    layout = appended_layout(earlier, by_snapshot) if earlier else own_layout(by_snapshot)
    counts["snapshots_written"] = len(by_snapshot)
    counts["snapshots_referenced"] = len(layout["partitions"]) - len(by_snapshot)
    counts["documents_all_snapshots"] = sum(p["documents"] for p in layout["partitions"])
    return {"counts": counts, "metrics": {"truncated_files": truncated}, "layout": layout}


def list_input_files(roots: list[str]) -> list[str]:
    """Input file URIs: what doc ids, input_file and quarantine rows name, so equal names in two folders differ."""
    return [info.uri for info in iter_files([normalize_uri(root) for root in roots]) if is_data_file(info.uri)]


def require_html_extractor(files: list[str]) -> None:
    """Fail before Spark starts, naming the first .warc file, when its HTML cannot be turned into text."""
    for uri in files:
        if input_kind(uri) == "warc":
            html_extractor(uri)
            return


def ingest(spark, files: list[str], output: str, cfg: IngestConfig) -> tuple[dict, list[dict], dict[str, int]]:
    """Counts, the files cut short, and the documents written per snapshot partition."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    language_model = cfg.language_model or default_language_model()
    rows = spark.sparkContext.parallelize(files, max(1, len(files))).flatMap(
        lambda f: prepare_file(f, cfg, language_model)
    )
    df = spark.createDataFrame(rows, schema=", ".join(f"{n} {t}" for n, t in COLUMNS))
    df = df.persist(StorageLevel.DISK_ONLY)  # parse once, then count and write each partition
    try:
        by_reason, by_snapshot = {}, {}
        for r in df.groupBy("reason", "snapshot").count().collect():
            by_reason[r["reason"] or "good"] = by_reason.get(r["reason"] or "good", 0) + r["count"]
            if r["reason"] is None:
                by_snapshot[r["snapshot"]] = r["count"]
        counts = summarize(by_reason, len(files))
        check_bad_fraction(counts, cfg.max_bad_fraction)
        write_partitions(df.where(F.col("reason").isNull()).select(*GOOD_COLUMNS), output, sorted(by_snapshot))
        df.where(F.col("reason").isNotNull()).select(*QUARANTINE_COLUMNS).write.parquet(join(output, QUARANTINE_DIR))
        truncated = truncated_files(df)
    finally:
        df.unpersist()
    return counts, truncated, by_snapshot


def write_partitions(good, output: str, snapshots: list[str]) -> None:
    """One folder per snapshot, the snapshot column kept inside the files (Spark's partitionBy would drop it)."""
    from pyspark.sql import functions as F

    if not snapshots:
        good.write.parquet(join(output, DATA_DIR))  # an empty data/ with the schema, as before partitions
    for snapshot in snapshots:
        good.where(F.col("snapshot") == snapshot).write.parquet(join(output, partition_path(snapshot)))


def truncated_files(df) -> list[dict]:
    """Files cut short (one quarantine row each): named in the manifest, not only counted."""
    from pyspark.sql import functions as F

    rows = df.where(F.col("reason") == TRUNCATED).select("input_file", "ordinal", "byte_offset", "raw").collect()
    return sorted(({"input_file": r.input_file, "records_read": r.ordinal, "byte_offset": r.byte_offset,
                    "raw": r.raw} for r in rows), key=lambda cut: cut["input_file"])


def summarize(by_reason: dict[str, int], n_files: int) -> dict:
    good = by_reason.pop("good", 0)
    bad = sum(by_reason.values())
    counts = {"input_files": n_files, "records_in": good + bad, "records_good": good, "records_quarantined": bad}
    counts.update({f"quarantined_{reason}": n for reason, n in sorted(by_reason.items())})
    return counts


def check_bad_fraction(counts: dict, limit: float) -> None:
    total = counts["records_in"]
    bad = counts["records_quarantined"]
    if total and bad / total > limit:
        reasons = ", ".join(f"{k.removeprefix('quarantined_')}={v}" for k, v in counts.items() if k.startswith("quarantined_"))
        raise InputError(
            f"ingest: {bad} of {total} records ({bad / total:.1%}) are malformed, above ingest.max_bad_fraction="
            f"{limit:.1%} ({reasons}); nothing was committed"
        )


def prepare_file(file: str, cfg: IngestConfig, language_model: str) -> Iterator[tuple]:
    """Runs on an executor: one input file to output rows (good rows have reason None)."""
    source_kind = input_kind(file) or "unknown"
    for record in read_file(file):
        if isinstance(record, BadRecord):
            yield quarantine_row(file, record.ordinal, record.reason, record.raw, record.byte_offset)
            continue
        yield prepare_record(file, record, cfg, language_model, source_kind)


def prepare_record(file: str, record: RawRecord, cfg: IngestConfig, language_model: str, source_kind: str) -> tuple:
    text = normalize_text(record.text)
    if not text:
        return quarantine_row(file, record.ordinal, "empty_text", record.text[:200])
    if len(text) > cfg.max_text_chars:
        return quarantine_row(file, record.ordinal, "too_large", text[:200])
    crawl_time = parse_time(record.crawl_time)
    if record.crawl_time and crawl_time is None:
        return quarantine_row(file, record.ordinal, "bad_crawl_time", record.crawl_time[:200])
    language, score = identify_language(text, language_model, cfg.language_chars)
    text_hash = content_hash(text)
    return (
        stable_doc_id(file, record.ordinal, text_hash),
        text,
        record.url,
        registered_domain(record.url),
        record.snapshot or cfg.default_snapshot or "unknown",
        crawl_time,
        language,
        score,
        text_hash,
        record.source or source_kind,
        record.source_id,
        file,
        record.ordinal,
        None,
        None,
        None,
    )


def quarantine_row(file: str, ordinal: int, reason: str, raw: str, byte_offset: int | None = None) -> tuple:
    return (None,) * 11 + (file, ordinal, reason, raw, byte_offset)
