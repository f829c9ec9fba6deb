"""Streaming readers for crawl inputs: JSON lines, Parquet and WET, each record parsed or explained.

A reader never raises on bad data: every input record comes out either as a `RawRecord` or as a `BadRecord`
with a reason, so the caller can quarantine and count it.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from typing import IO, Iterator

from xgen_core.storage import store_for

RAW_SNIPPET_CHARS = 2000


@dataclass(frozen=True)
class RawRecord:
    ordinal: int
    text: str
    url: str
    snapshot: str | None
    crawl_time: str | None
    source: str | None
    source_id: str | None


@dataclass(frozen=True)
class BadRecord:
    ordinal: int
    reason: str
    raw: str


def input_kind(name: str) -> str | None:
    lowered = name.lower().removesuffix(".gz")
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".wet") or lowered.endswith(".warc"):
        return "wet"
    return None


def is_data_file(name: str) -> bool:
    """Hadoop-style hidden files (_SUCCESS, .crc) and artifact manifests are not data."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(("_", ".")) and base != "manifest.json"


def read_file(uri: str) -> Iterator[RawRecord | BadRecord]:
    kind = input_kind(uri)
    if kind is None:
        yield BadRecord(0, "unsupported_file", uri)
        return
    with store_for(uri).open_read(uri) as raw_stream:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw_stream) if uri.lower().endswith(".gz") else raw_stream
        try:
            if kind == "jsonl":
                yield from read_jsonl(stream)
            elif kind == "parquet":
                yield from read_parquet(stream)
            else:
                yield from read_wet(stream)
        except (OSError, EOFError, ValueError) as exc:  # truncated gzip, corrupt Parquet footer, ...
            yield BadRecord(-1, "unreadable_file", f"{uri}: {exc}"[:RAW_SNIPPET_CHARS])


def read_jsonl(stream: IO[bytes]) -> Iterator[RawRecord | BadRecord]:
    for ordinal, line in enumerate(stream):
        if not line.strip():
            continue
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            yield BadRecord(ordinal, "invalid_utf8", line[:RAW_SNIPPET_CHARS].decode("utf-8", "replace"))
            continue
        try:
            fields = json.loads(decoded)
        except json.JSONDecodeError:
            yield BadRecord(ordinal, "bad_json", decoded[:RAW_SNIPPET_CHARS])
            continue
        yield record_from_fields(ordinal, fields, decoded)


def read_parquet(stream: IO[bytes]) -> Iterator[RawRecord | BadRecord]:
    import pyarrow.parquet as pq

    ordinal = 0
    parquet = pq.ParquetFile(io.BytesIO(stream.read()) if not stream.seekable() else stream)
    for batch in parquet.iter_batches(batch_size=1024):
        for fields in batch.to_pylist():
            yield record_from_fields(ordinal, fields, None)
            ordinal += 1


FIELD_TYPES = {"url": str, "snapshot": str, "source": str}


def record_from_fields(ordinal: int, fields, raw: str | None) -> RawRecord | BadRecord:
    def bad(reason: str) -> BadRecord:
        snippet = raw if raw is not None else json.dumps(fields, default=str, ensure_ascii=False)
        return BadRecord(ordinal, reason, snippet[:RAW_SNIPPET_CHARS])

    if not isinstance(fields, dict):
        return bad("not_an_object")
    text = fields.get("text")
    if text is None:
        return bad("missing_text")
    if not isinstance(text, str):
        return bad("wrong_type:text")
    for name, expected in FIELD_TYPES.items():
        if fields.get(name) is not None and not isinstance(fields[name], expected):
            return bad(f"wrong_type:{name}")
    crawl_time = fields.get("crawl_time", fields.get("date"))
    if crawl_time is not None and not isinstance(crawl_time, str):
        crawl_time = crawl_time.isoformat() if hasattr(crawl_time, "isoformat") else None
        if crawl_time is None:
            return bad("wrong_type:crawl_time")
    source_id = fields.get("id")
    return RawRecord(
        ordinal=ordinal,
        text=text,
        url=fields.get("url") or "",
        snapshot=fields.get("snapshot"),
        crawl_time=crawl_time,
        source=fields.get("source"),
        source_id=None if source_id is None else str(source_id),
    )


def read_wet(stream: IO[bytes]) -> Iterator[RawRecord | BadRecord]:
    """WARC/1.0 records; `conversion` records are documents, `warcinfo` names the crawl snapshot."""
    snapshot = None
    ordinal = 0
    reader = io.BufferedReader(stream) if not isinstance(stream, io.BufferedReader) else stream
    while True:
        headers, problem = _read_warc_headers(reader)
        if problem:
            yield BadRecord(ordinal, "bad_warc_record", problem)
            ordinal += 1
        if headers is None:
            return
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            yield BadRecord(ordinal, "bad_warc_record", f"no Content-Length in {headers}"[:RAW_SNIPPET_CHARS])
            ordinal += 1
            continue
        payload = reader.read(length)
        if len(payload) < length:
            yield BadRecord(ordinal, "bad_warc_record", "record truncated at end of file")
            return
        kind = headers.get("warc-type", "")
        if kind == "warcinfo":
            snapshot = _warcinfo_snapshot(payload) or snapshot
            continue
        if kind != "conversion":
            continue
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            yield BadRecord(ordinal, "invalid_utf8", payload[:RAW_SNIPPET_CHARS].decode("utf-8", "replace"))
            ordinal += 1
            continue
        yield RawRecord(ordinal, text, headers.get("warc-target-uri", ""), snapshot, headers.get("warc-date"),
                        None, headers.get("warc-record-id"))
        ordinal += 1


def _read_warc_headers(reader: io.BufferedReader) -> tuple[dict | None, str | None]:
    line = reader.readline()
    while line and not line.strip():
        line = reader.readline()
    if not line:
        return None, None
    problem = None
    if not line.startswith(b"WARC/"):
        problem = f"bytes outside any WARC record: {line[:200]!r}"
        while line and not line.startswith(b"WARC/"):  # resynchronise on the next record
            line = reader.readline()
        if not line:
            return None, problem
    headers = {}
    for raw_line in iter(reader.readline, b""):
        if not raw_line.strip():
            break
        name, _, value = raw_line.decode("utf-8", "replace").partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers, problem


def _warcinfo_snapshot(payload: bytes) -> str | None:
    for line in payload.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "ispartof":
            return value.strip()
    return None
