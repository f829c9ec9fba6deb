"""Step 1: read the input chunks, check every row, hash each text (its exact-duplicate key and its graph node).

The texts stay in Python tasks: Spark only sees the slim per-document columns produced here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from xgen_core.config import DedupConfig
from xgen_core.data.dedup.signatures import STORED_BLOCK_SCHEMA, Signing, signed_blocks
from xgen_core.data.doc_chunks import Chunk, data_files, input_format, plan_chunks, read_chunk
from xgen_core.data.sparkio import first_of_runs, rename_parts
from xgen_core.errors import XgenError

BINARY_SHARE_LIMIT = 0.05
TIMESTAMP = pa.timestamp("us", tz="UTC")


def parquet_inputs(spark: SparkSession, input_uri: str | list[str], scratch_uri: str) -> list[str]:
    """The input's Parquet files; JSONL inputs are first converted by Spark (schema inference, malformed lines
    kept as rows without id), into scratch_uri."""
    uris = [input_uri] if isinstance(input_uri, str) else list(input_uri)
    files = data_files(uris)
    if input_format(files, ", ".join(uris)) == "parquet":
        return files
    documents = spark.read.option("mode", "PERMISSIVE").json(files)
    if "crawl_time" in documents.columns:
        documents = documents.withColumn("crawl_time", F.col("crawl_time").cast("timestamp"))
    documents.write.mode("overwrite").parquet(scratch_uri)
    rename_parts(spark, scratch_uri)
    return data_files([scratch_uri])


def unified_schema(files: list[str], rows_per_chunk: int) -> tuple[list[Chunk], pa.Schema]:
    try:
        return plan_chunks(files, rows_per_chunk)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise XgenError(f"dedup input files disagree on their columns: {error}") from None


def normalised_documents(table: pa.Table) -> pa.Table:
    """Map the accepted input shapes (sample JSONL, ingest Parquet) onto one schema, other columns kept.

    Ingest names the key `doc_id`; plain inputs may lack domain, crawl time or a quality column.
    """
    if "id" not in table.column_names and "doc_id" in table.column_names:
        table = table.rename_columns(["id" if name == "doc_id" else name for name in table.column_names])
    missing = {"id", "text"} - set(table.column_names)
    if missing:
        raise XgenError(f"dedup input lacks column(s) {sorted(missing)}; found {sorted(table.column_names)}")
    url = optional_column(table, "url", pa.string())
    derived = {
        "id": table.column("id").cast(pa.string()),
        "text": table.column("text").cast(pa.string()),
        "url": url,
        "snapshot": pc.fill_null(optional_column(table, "snapshot", pa.string()), "unknown"),
        "crawl_time": crawl_time_column(table),
        "quality": quality_column(table),
        "domain": table.column("domain").cast(pa.string()) if "domain" in table.column_names else domain_column(url),
    }
    for name, column in derived.items():
        table = with_column(table, name, column)
    return table


def with_column(table: pa.Table, name: str, column) -> pa.Table:
    """table with column `name` replaced, or appended when it has none."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def optional_column(table: pa.Table, name: str, type_: pa.DataType):
    return table.column(name).cast(type_) if name in table.column_names else pa.nulls(len(table), type_)


def crawl_time_column(table: pa.Table):
    if "crawl_time" not in table.column_names:
        return pa.nulls(len(table), TIMESTAMP)
    column = table.column("crawl_time")
    try:
        return pc.cast(column, TIMESTAMP, safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise XgenError(f"dedup input column crawl_time ({column.type}) does not read as a timestamp: {error}") from None


def quality_column(table: pa.Table):
    """The quality score used to rank variants: an explicit `quality` column, else ingest's language score."""
    for name in ("quality", "language_score"):
        if name in table.column_names:
            return table.column(name).cast(pa.float64())
    return pa.nulls(len(table), pa.float64())


# URLs whose host this expression reads exactly as urlsplit does: printable ASCII, a scheme and "//", at most one
# "@", a numeric port if any, no brackets (IPv6 literals) or "%" (zone ids) in the host. The rest go through urlsplit.
PLAIN_URL = (
    r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^/?#@\[\]\x00-\x20\x7f-\x{10FFFF}]*@)?"
    r"(?P<host>[^/?#@\[\]:%\x00-\x20\x7f-\x{10FFFF}]*)(?::[0-9]*)?(?:[/?#][\x21-\x7e]*)?$"
)


def domain_column(urls) -> pa.Array:
    """url_host of every URL, with one vectorised regular expression for the plain ones (nearly all)."""
    urls = urls.combine_chunks() if isinstance(urls, pa.ChunkedArray) else urls
    plain = pc.fill_null(pc.match_substring_regex(urls, PLAIN_URL), False)
    host = pc.utf8_lower(pc.struct_field(pc.extract_regex(pc.if_else(plain, urls, ""), PLAIN_URL), "host"))
    no_host = pc.equal(pc.utf8_length(host), 0)
    host = pc.if_else(pc.starts_with(host, "www."), pc.utf8_slice_codeunits(host, 4), host)
    host = pc.if_else(no_host, pa.scalar(None, pa.string()), host)
    if pc.all(plain).as_py() is not False:
        return host
    hosts = host.to_pylist()
    for row in np.flatnonzero(~plain.to_numpy(zero_copy_only=False)):
        hosts[row] = url_host(urls[int(row)].as_py())
    return pa.array(hosts, pa.string())


def url_host(url: str | None) -> str | None:
    """Lower-cased host of the URL without a leading www. (None when the URL has no host)."""
    if not url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host[4:] if host.startswith("www.") else host


BINARY_CODEPOINTS = [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F, 0xFFFD]
BINARY_RE = re.compile("[" + "".join(re.escape(chr(c)) for c in BINARY_CODEPOINTS) + "]")
WITHOUT_BINARY = str.maketrans("", "", "".join(map(chr, BINARY_CODEPOINTS)))


def binary_share(text: str) -> float:
    """Share of characters that text does not contain: C0 controls (bar tab and newlines), DEL and U+FFFD."""
    if not BINARY_RE.search(text):  # cheap test first: clean text is the common case
        return 0.0
    return (len(text) - len(text.translate(WITHOUT_BINARY))) / max(len(text), 1)


def row_problem(doc_id: str | None, text: str | None, max_doc_chars: int) -> str | None:
    """The quarantine reason visible in the row alone: no id or text, blank, oversized, binary; None if fine."""
    if not doc_id:
        return "missing_id"
    if text is None:
        return "missing_text"
    if not text.strip():
        return "empty"
    if len(text) > max_doc_chars:
        return "too_long"
    if binary_share(text) > BINARY_SHARE_LIMIT:
        return "binary_looking"
    return None


def regex_class(codepoints) -> str:
    """An RE2 character class body matching exactly these code points."""
    return "".join(f"\\x{{{c:x}}}" for c in codepoints)


# What str.strip() and str.split() remove (str.isspace), and the code points binary_share counts.
WHITESPACE_CODEPOINTS = [
    *range(0x09, 0x0E), *range(0x1C, 0x21), 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
    0x205F, 0x3000,
]  # fmt: skip
HAS_NON_SPACE = f"[^{regex_class(WHITESPACE_CODEPOINTS)}]"
HAS_BINARY = f"[{regex_class(BINARY_CODEPOINTS)}]"


def row_problems(ids: pa.Array, texts: pa.Array, max_doc_chars: int) -> list[str | None]:
    """row_problem of every row; vectorised tests find the rows that may have one (a superset), row_problem decides.

    The rows with a problem are few: the per-row Python checks run only on them.
    """
    missing_id = pc.or_kleene(pc.is_null(ids), pc.equal(ids, ""))
    missing_text = pc.is_null(texts)
    blank = pc.invert(pc.match_substring_regex(texts, HAS_NON_SPACE))
    too_long = pc.greater(pc.utf8_length(texts), max_doc_chars)
    binary = pc.match_substring_regex(texts, HAS_BINARY)
    suspect = missing_id
    for mask in (missing_text, blank, too_long, binary):
        suspect = pc.or_kleene(suspect, pc.fill_null(mask, False))
    reasons: list[str | None] = [None] * len(texts)
    for row in np.flatnonzero(pc.fill_null(suspect, True).to_numpy(zero_copy_only=False)):
        reasons[row] = row_problem(ids[int(row)].as_py(), texts[int(row)].as_py(), max_doc_chars)
    return reasons


def content_hash(text: str | None) -> str | None:
    """Hex SHA-1 of the UTF-8 text: the exact-duplicate key."""
    return None if text is None else hashlib.sha1(text.encode("utf-8")).hexdigest()


def content_node(digest: str | None) -> int | None:
    """The graph vertex of a text: a 60-bit integer taken from its content hash."""
    return None if digest is None else int(digest[:15], 16)


def content_digests(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[n, 20] SHA-1 digests of the UTF-8 texts, bool[n] has a text), hashed from Arrow's buffer as it is."""
    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int32)[texts.offset : texts.offset + len(texts) + 1].tolist()
    data = memoryview(texts.buffers()[2] or b"")
    sha1 = hashlib.sha1
    digests = b"".join(sha1(data[start:stop]).digest() for start, stop in zip(offsets[:-1], offsets[1:]))
    present = pc.is_valid(texts).to_numpy(zero_copy_only=False)
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(texts), 20), present


HEX_PAIRS = np.frombuffer("".join(f"{byte:02x}" for byte in range(256)).encode(), dtype=np.uint8).reshape(256, 2)


def content_hash_column(digests: np.ndarray, present: np.ndarray) -> pa.Array:
    """content_hash of every row (nulls where there is no text), built from the digests without a Python loop."""
    hex_bytes = HEX_PAIRS[digests].reshape(len(digests), 40)
    offsets = np.arange(len(digests) + 1, dtype=np.int32) * 40
    validity = pa.array(present).buffers()[1]
    return pa.Array.from_buffers(
        pa.string(), len(digests), [validity, pa.py_buffer(offsets), pa.py_buffer(hex_bytes.tobytes())],
        null_count=int(len(present) - present.sum()),
    )


def content_nodes(digests: np.ndarray, present: np.ndarray) -> np.ndarray:
    """content_node of every row as int64, -1 where there is no text: the digests' first 60 bits."""
    first_words = np.ascontiguousarray(digests[:, :8]).view(">u8").reshape(-1)
    return np.where(present, (first_words >> np.uint64(4)).astype(np.int64), -1)


PER_DOCUMENT_SCHEMA = T.StructType(
    [
        T.StructField("chunk", T.IntegerType()),
        T.StructField("row", T.IntegerType()),
        T.StructField("id", T.StringType()),
        T.StructField("node", T.LongType()),
        T.StructField("snapshot", T.StringType()),
        T.StructField("url", T.StringType()),
        T.StructField("domain", T.StringType()),
        T.StructField("crawl_time", T.TimestampType()),
        T.StructField("quality", T.DoubleType()),
        T.StructField("length", T.IntegerType()),
        T.StructField("quarantine_reason", T.StringType()),
    ]
)
# What a scan task yields: per-document rows (kind null) and, where it signs, signature blocks (the document columns
# null but snapshot on STORED blocks). One checkpoint holds both; the signatures never become rows of their own.
SCAN_SCHEMA = T.StructType([*PER_DOCUMENT_SCHEMA.fields, *[f for f in STORED_BLOCK_SCHEMA.fields if f.name != "snapshot"]])
CHUNK_SCHEMA = "chunk int, uri string, row_start long, row_count long"
SCAN_BATCH_ROWS = 8192


def chunk_frame(spark: SparkSession, chunks: list[Chunk]) -> DataFrame:
    """One row and one partition per chunk: each task reads its own documents."""
    rows = [(c.index, c.uri, c.row_start, c.row_count) for c in chunks]
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, max(1, len(rows))), CHUNK_SCHEMA)


def chunk_of(row: dict) -> Chunk:
    return Chunk(row["chunk"], row["uri"], row["row_start"], row["row_count"])


def for_each_chunk(process: Callable[[Chunk], Iterator[pa.RecordBatch]]):
    """mapInArrow over chunk descriptors: `process`'s batches for each chunk."""

    def compute(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in batch.to_pylist():
                yield from process(chunk_of(row))

    return compute


def scan_chunks(params: DedupConfig, signing: Signing | None):
    """Every document's slim columns and quarantine reason and, with `signing`, the blocks of the signatures of each
    distinct (snapshot, text) of the chunk (SCAN_SCHEMA)."""
    return for_each_chunk(lambda chunk: scan_chunk(chunk, params, signing))


def sign_chunks(signing: Signing):
    """The signature blocks (SCAN_SCHEMA, no document rows) of each distinct (snapshot, text) of the chunk's checked
    rows, for the snapshots not in signing.reused (a refresh signs only what is new)."""
    return for_each_chunk(lambda chunk: sign_chunk(chunk, signing))


def checked_chunk(chunk: Chunk, params: DedupConfig) -> tuple[pa.Table, list, np.ndarray]:
    """The chunk's normalised documents, their quarantine reasons (None if fine) and content nodes (-1 for a row
    without text)."""
    # One chunk per column: the checks, the hashes and the signing then read the columns without copying them again.
    docs = normalised_documents(read_chunk(chunk)).combine_chunks()
    texts = docs.column("text").combine_chunks()
    reasons = row_problems(docs.column("id").combine_chunks(), texts, params.max_doc_chars)
    return docs, reasons, content_nodes(*content_digests(texts))


def first_rows_of_keys(snapshots: pa.ChunkedArray, nodes: np.ndarray, reasons: list, reused: frozenset[str]) -> np.ndarray:
    """The first checked row of each distinct (snapshot, node), for the snapshots not in `reused`; ascending."""
    wanted = np.array([reason is None for reason in reasons], dtype=bool)
    if reused:
        wanted &= ~pc.is_in(snapshots, pa.array(sorted(reused), pa.string())).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(wanted)
    snapshot_codes = pc.dictionary_encode(snapshots.combine_chunks()).indices.to_numpy(zero_copy_only=False)
    order = np.lexsort((nodes[rows], snapshot_codes[rows]))  # stable: equal keys keep their row order
    ordered = rows[order]
    return np.sort(ordered[first_of_runs(snapshot_codes[ordered], nodes[ordered])])


def scan_chunk(chunk: Chunk, params: DedupConfig, signing: Signing | None) -> Iterator[pa.RecordBatch]:
    docs, reasons, nodes = checked_chunk(chunk, params)
    columns = {
        "chunk": pa.array(np.full(len(docs), chunk.index, np.int32)),
        "row": pa.array(np.arange(len(docs), dtype=np.int32)),
        "id": docs.column("id"),
        "node": pa.array(nodes, mask=nodes < 0),
        "snapshot": docs.column("snapshot"),
        "url": docs.column("url"),
        "domain": docs.column("domain"),
        "crawl_time": docs.column("crawl_time"),
        "quality": docs.column("quality"),
        "length": pc.utf8_length(docs.column("text")).cast(pa.int32()),
        "quarantine_reason": pa.array(reasons, pa.string()),
    }
    for batch in pa.table(columns).to_batches(max_chunksize=SCAN_BATCH_ROWS):
        yield as_scan_batch(batch)
    if signing:
        yield from signatures_of_chunk(docs, reasons, nodes, signing)


def sign_chunk(chunk: Chunk, signing: Signing) -> Iterator[pa.RecordBatch]:
    yield from signatures_of_chunk(*checked_chunk(chunk, signing.params), signing)


def signatures_of_chunk(docs: pa.Table, reasons: list, nodes: np.ndarray, signing: Signing) -> Iterator[pa.RecordBatch]:
    rows = first_rows_of_keys(docs.column("snapshot"), nodes, reasons, signing.reused)
    texts, snapshots = docs.column("text").combine_chunks(), docs.column("snapshot").combine_chunks()
    for batch in signed_blocks(signing, texts, rows, nodes, snapshots):
        yield as_scan_batch(batch)


# The same columns as Arrow types (timestamps in UTC, as the scan writes them).
SCAN_ARROW_SCHEMA = to_arrow_schema(SCAN_SCHEMA, timezone="UTC")


def as_scan_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of some of SCAN_SCHEMA's columns with the others added as nulls."""
    columns = [
        batch.column(name) if name in batch.schema.names else pa.nulls(batch.num_rows, SCAN_ARROW_SCHEMA.field(name).type)
        for name in SCAN_SCHEMA.names
    ]
    return pa.RecordBatch.from_arrays(columns, names=SCAN_SCHEMA.names)


def documents_of(scanned: DataFrame) -> DataFrame:
    """The per-document rows of a scan (PER_DOCUMENT_SCHEMA)."""
    return scanned.filter(F.col("kind").isNull()).select(*PER_DOCUMENT_SCHEMA.names)


def blocks_of(scanned: DataFrame) -> DataFrame:
    """The signature blocks of a scan (STORED_BLOCK_SCHEMA)."""
    return scanned.filter(F.col("kind").isNotNull()).select(*STORED_BLOCK_SCHEMA.names)


def sign_new_snapshots(
    spark: SparkSession, hashable: DataFrame, chunks: list[Chunk], signing: Signing
) -> tuple[DataFrame, int]:
    """A refresh's fresh signature blocks: those of the snapshots not reused, from a second read of only the chunks
    that hold one of their checked rows; and how many rows those chunks hold."""
    reused = sorted(signing.reused)
    new_rows = hashable.filter(~F.col("snapshot").isin(reused)) if reused else hashable
    to_read = sorted(row.chunk for row in new_rows.select("chunk").distinct().collect())
    descriptors = chunk_frame(spark, [chunks[index] for index in to_read])
    signed = descriptors.mapInArrow(sign_chunks(signing), SCAN_SCHEMA).localCheckpoint()
    return blocks_of(signed), sum(chunks[index].row_count for index in to_read)


def flag_repeated_ids(slim: DataFrame) -> DataFrame:
    """Add repeats_id: false for the row that keeps its id, true for later rows repeating it.

    The smallest (node, snapshot, url) keeps the id, then input order, so the choice is deterministic. A flag from a
    lag, not a row number filtered to 1: that filter makes Spark sort every row once more before the exchange by id
    (a partial group limit), which drops nothing when ids are unique.
    """
    order = ["node", "snapshot", "url", "chunk", "row"]
    earlier_row = F.lag("row").over(Window.partitionBy("id").orderBy(*order))
    return slim.withColumn("repeats_id", earlier_row.isNotNull())
