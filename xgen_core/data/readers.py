"""Streaming readers for crawl inputs: JSON lines, Parquet, WET and WARC, each record parsed or explained.

A reader never raises on bad data: every input record comes out either as a `RawRecord` or as a `BadRecord`
with a reason, so the caller can quarantine and count it. The one exception is a `.warc` input when the HTML
extractor (trafilatura) cannot be loaded: that is a broken environment, not bad data, and fails naming the file.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Callable, Iterator

from xgen_core.errors import InputError
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
    byte_offset: int | None = None  # where in the (decompressed) file the problem starts, where known


@dataclass
class ReadPosition:
    """Bytes of the decompressed stream a reader has consumed through its last complete record."""

    offset: int = 0


TRUNCATED = "truncated_file"


def input_kind(name: str) -> str | None:
    lowered = name.lower().removesuffix(".gz")
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".wet"):
        return "wet"
    if lowered.endswith(".warc"):
        return "warc"
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
    # A .warc is expected to hold HTML responses: check the extractor loads before reading; a WET file needs
    # it only if it holds a response record after all.
    extract_html = html_extractor(uri) if kind == "warc" else lambda html, url: html_extractor(uri)(html, url)
    position = ReadPosition()
    records = 0
    with store_for(uri).open_read(uri) as raw_stream:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw_stream) if uri.lower().endswith(".gz") else raw_stream
        try:
            if kind == "jsonl":
                reader = read_jsonl(stream, position)
            elif kind == "parquet":
                reader = read_parquet(stream)
            else:
                reader = read_warc(stream, position, extract_html)
            for record in reader:
                records += 1
                yield record
        except EOFError as exc:  # a gzip stream that ends before its end-of-stream marker: the file was cut short
            yield truncated_record(uri, records, position.offset, exc)
        except (OSError, ValueError, zlib.error) as exc:  # not gzip at all, corrupt Parquet footer, ...
            yield BadRecord(-1, "unreadable_file", f"{uri}: {exc}"[:RAW_SNIPPET_CHARS])


def truncated_record(uri: str, records: int, offset: int, exc: Exception) -> BadRecord:
    message = (f"truncated after {records} records at byte offset {offset} of the decompressed stream: {uri}: "
               f"{exc}")
    return BadRecord(records, TRUNCATED, message[:RAW_SNIPPET_CHARS], offset)


def read_jsonl(stream: IO[bytes], position: ReadPosition | None = None) -> Iterator[RawRecord | BadRecord]:
    position = position or ReadPosition()
    for ordinal, line in enumerate(stream):
        position.offset += len(line)
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


def read_warc(
    stream: IO[bytes],
    position: ReadPosition | None = None,
    extract_html: Callable[[bytes, str], str | None] | None = None,
) -> Iterator[RawRecord | BadRecord]:
    """WARC/1.0 records (WET or WARC files): `warcinfo` names the crawl snapshot; `conversion` records (WET) are
    documents as they are; `response` records (WARC) are HTTP responses whose HTML becomes text through
    extract_html. Request, metadata and other records describe the crawl, not documents."""
    position = position or ReadPosition()
    snapshot = None
    ordinal = 0
    reader = _CountingReader(stream)
    while True:
        headers, problem = _read_warc_headers(reader)
        if problem:
            yield BadRecord(ordinal, "bad_warc_record", problem, position.offset)
            ordinal += 1
        if headers is None:
            return
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            yield BadRecord(ordinal, "bad_warc_record", f"no Content-Length in {headers}"[:RAW_SNIPPET_CHARS],
                            position.offset)
            ordinal += 1
            continue
        payload = reader.read(length)
        if len(payload) < length:
            yield BadRecord(ordinal, "bad_warc_record", "record truncated at end of file", position.offset)
            return
        record_start, position.offset = position.offset, reader.consumed
        kind = headers.get("warc-type", "")
        if kind == "warcinfo":
            snapshot = _warcinfo_snapshot(payload) or snapshot
            continue
        if kind == "conversion":
            yield _conversion_record(ordinal, headers, payload, snapshot, record_start)
        elif kind == "response":
            yield _response_record(ordinal, headers, payload, snapshot, record_start,
                                   extract_html or html_extractor("WARC stream"))
        else:
            continue
        ordinal += 1


class _CountingReader:
    """A buffered reader that counts the bytes handed out: record offsets without relying on tell()."""

    def __init__(self, stream: IO[bytes]):
        self._reader = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)
        self.consumed = 0

    def readline(self) -> bytes:
        line = self._reader.readline()
        self.consumed += len(line)
        return line

    def read(self, size: int) -> bytes:
        data = self._reader.read(size)
        self.consumed += len(data)
        return data


def _conversion_record(ordinal: int, headers: dict, payload: bytes, snapshot: str | None,
                       offset: int) -> RawRecord | BadRecord:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return BadRecord(ordinal, "invalid_utf8", payload[:RAW_SNIPPET_CHARS].decode("utf-8", "replace"), offset)
    return _warc_document(ordinal, headers, text, snapshot)


def _warc_document(ordinal: int, headers: dict, text: str, snapshot: str | None) -> RawRecord:
    return RawRecord(ordinal, text, headers.get("warc-target-uri", ""), snapshot, headers.get("warc-date"),
                     None, headers.get("warc-record-id"))


HTML_TYPES = ("text/html", "application/xhtml+xml")


def _response_record(ordinal: int, headers: dict, payload: bytes, snapshot: str | None, offset: int,
                     extract_html: Callable[[bytes, str], str | None]) -> RawRecord | BadRecord:
    """An HTTP response: status and content type checked, the body decoded from its transfer and content
    encodings, its main text extracted."""
    url = headers.get("warc-target-uri", "")

    def bad(reason: str, detail: str) -> BadRecord:
        return BadRecord(ordinal, reason, f"{url}: {detail}"[:RAW_SNIPPET_CHARS], offset)

    status, http_headers, body = _split_http(payload)
    if status is None:
        return bad("bad_http_response", repr(payload[:200]))
    if not 200 <= status < 300:
        return bad("http_status", f"status {status}")
    content_type = http_headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in HTML_TYPES:
        return bad("not_html", f"Content-Type {content_type or '(none)'}")
    try:
        body = _decoded_body(http_headers, body)
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        return bad("bad_http_body", str(exc))
    text = extract_html(body, url)
    if not text:
        return bad("no_text_extracted", f"{len(body)} bytes of HTML without main text")
    return _warc_document(ordinal, headers, text, snapshot)


def _split_http(payload: bytes) -> tuple[int | None, dict, bytes]:
    head, separator, body = payload.partition(b"\r\n\r\n")
    if not separator:
        head, separator, body = payload.partition(b"\n\n")
    lines = head.decode("iso-8859-1").splitlines()
    status_parts = lines[0].split() if lines else []
    if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/") or not status_parts[1].isdigit():
        return None, {}, b""
    http_headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        http_headers[name.strip().lower()] = value.strip()
    return int(status_parts[1]), http_headers, body


def _decoded_body(http_headers: dict, body: bytes) -> bytes:
    """Crawlers differ: Common Crawl stores bodies decoded, wget and others keep chunks and gzip as received."""
    if "chunked" in http_headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    encoding = http_headers.get("content-encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding not in ("", "identity"):
        raise ValueError(f"unsupported Content-Encoding {encoding}")
    return body


def _dechunk(body: bytes) -> bytes:
    stream, out = io.BytesIO(body), []
    while True:
        size_line = stream.readline()
        if not size_line:
            raise ValueError("chunked body ends without its last chunk")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(stream.read(size))
        stream.readline()


def html_extractor(uri: str) -> Callable[[bytes, str], str | None]:
    """trafilatura's main-text extraction, as datatrove uses it; fails naming the file when it cannot load."""
    try:
        extract = _trafilatura_extract()
    except Exception as exc:  # ImportError, or a broken install failing at import time
        raise InputError(
            f"{uri}: .warc response records need trafilatura to turn HTML into text, and it does not load "
            f"({type(exc).__name__}: {exc}); install the project's locked environment (make env)"
        ) from None
    return extract


@lru_cache(maxsize=1)
def _trafilatura_extract() -> Callable[[bytes, str], str | None]:
    import trafilatura

    def extract(html: bytes, url: str) -> str | None:
        # deduplicate=False: trafilatura's duplicate filter is a process-wide cache, so its output would depend
        # on which files a Spark worker happened to read before this one.
        return trafilatura.extract(html, url=url or None, include_comments=False, favor_precision=True,
                                   deduplicate=False)

    return extract


def _read_warc_headers(reader: "_CountingReader") -> tuple[dict | None, str | None]:
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
