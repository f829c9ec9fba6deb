"""Readers turn every input record into a RawRecord or a BadRecord with a reason; they never raise."""

from __future__ import annotations

import gzip
import io
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xgen_core.data import readers
from xgen_core.data.readers import BadRecord, RawRecord, input_kind, is_data_file, read_file, read_jsonl, read_warc
from xgen_core.data.sample_corpus import Doc, wet_bytes
from xgen_core.errors import InputError


def reasons(records):
    return [r.reason for r in records if isinstance(r, BadRecord)]


def test_jsonl_good_and_each_kind_of_bad_line():
    lines = [
        json.dumps({"text": "hello", "url": "https://a.org/x", "snapshot": "CC-MAIN-2024-10", "id": 7}).encode(),
        b"{not json",
        b"\xff\xfe invalid utf-8",
        json.dumps({"url": "https://a.org/"}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps({"text": "ok", "url": 5}).encode(),
        json.dumps(["a", "list"]).encode(),
        b"",
    ]
    records = list(read_jsonl(io.BytesIO(b"\n".join(lines))))
    good = [r for r in records if isinstance(r, RawRecord)]
    assert [g.text for g in good] == ["hello"] and good[0].source_id == "7"
    assert reasons(records) == ["bad_json", "invalid_utf8", "missing_text", "wrong_type:text", "wrong_type:url",
                                "not_an_object"]
    assert [r.ordinal for r in records] == [0, 1, 2, 3, 4, 5, 6]


def test_wet_records_carry_the_snapshot_of_their_warcinfo():
    docs = [Doc(f"d{i}", f"text {i}\r\nline two", f"https://s{i}.org/", "", "2024-06-01T00:00:00Z", "web") for i in range(3)]
    records = list(read_warc(io.BytesIO(gzip.decompress(wet_bytes(docs, "CC-MAIN-2024-26")))))
    assert [r.text for r in records] == [d.text for d in docs]
    assert {r.snapshot for r in records} == {"CC-MAIN-2024-26"}
    assert records[1].url == "https://s1.org/" and records[1].crawl_time == "2024-06-01T00:00:00Z"


def test_wet_garbage_and_truncation_are_reported_not_raised():
    docs = [Doc("d", "body", "https://a.org/", "", "2024-06-01T00:00:00Z", "web")]
    data = gzip.decompress(wet_bytes(docs, "CC-MAIN-2024-26"))
    broken = b"junk line\n" + data + b"WARC/1.0\r\nWARC-Type: conversion\r\nContent-Length: 999\r\n\r\nshort"
    records = list(read_warc(io.BytesIO(broken)))
    assert reasons(records) == ["bad_warc_record", "bad_warc_record"]
    assert [r.text for r in records if isinstance(r, RawRecord)] == ["body"]


def test_parquet_rows_with_wrong_types_are_quarantined(tmp_path):
    path = tmp_path / "part.parquet"
    table = pa.table({"text": ["a doc", None, "another"], "url": ["https://x.org", "https://y.org", None]})
    pq.write_table(table, path)
    records = list(read_file(str(path)))
    assert [r.text for r in records if isinstance(r, RawRecord)] == ["a doc", "another"]
    assert reasons(records) == ["missing_text"]


def test_unsupported_and_corrupt_files_become_one_bad_record_each(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    assert reasons(read_file(str(tmp_path / "notes.txt"))) == ["unsupported_file"]
    assert reasons(read_file(str(tmp_path / "broken.jsonl.gz"))) == ["unreadable_file"]


def test_file_kinds_and_hidden_files():
    assert input_kind("a/crawl.jsonl.gz") == "jsonl" and input_kind("x.warc.wet.gz") == "wet"
    assert input_kind("CC-MAIN-1.warc.gz") == "warc" and input_kind("crawl.warc") == "warc"
    assert input_kind("part-0.parquet") == "parquet" and input_kind("x.csv") is None
    assert not is_data_file("out/_SUCCESS") and not is_data_file("out/manifest.json")
    assert not is_data_file("out/.part-0.crc") and is_data_file("out/part-0.parquet")


def jsonl_lines(n: int) -> list[bytes]:
    return [json.dumps({"text": f"document {i} about rivers", "url": f"https://a.org/{i}"}).encode() + b"\n"
            for i in range(n)]


def test_a_truncated_gzip_is_one_record_naming_how_far_it_got(tmp_path):
    lines = jsonl_lines(2000)
    compressed = gzip.compress(b"".join(lines), mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) * 2 // 3])
    records = list(read_file(str(path)))
    good = [r for r in records if isinstance(r, RawRecord)]
    [cut] = [r for r in records if isinstance(r, BadRecord)]
    assert 0 < len(good) < 2000 and cut is records[-1]
    assert cut.reason == "truncated_file"
    assert cut.raw.startswith(f"truncated after {len(good)} records at byte offset {cut.byte_offset} ")
    assert cut.byte_offset == sum(len(line) for line in lines[: len(good)])
    assert str(path) in cut.raw


def test_a_truncated_warc_gz_reports_the_end_of_its_last_whole_record(tmp_path):
    docs = [Doc(f"d{i}", f"text {i} " * 50, f"https://s{i}.org/", "", "2024-06-01T00:00:00Z", "web") for i in range(300)]
    compressed = wet_bytes(docs, "CC-MAIN-2024-26")
    path = tmp_path / "cut.warc.wet.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    records = list(read_file(str(path)))
    good = [r for r in records if isinstance(r, RawRecord)]
    assert [r.reason for r in records if isinstance(r, BadRecord)] == ["truncated_file"]
    whole = gzip.decompress(compressed)
    offset = records[-1].byte_offset
    assert whole[offset:].lstrip().startswith(b"WARC/1.0\r\nWARC-Type: conversion")
    assert whole[:offset].count(b"WARC-Type: conversion") == len(good)


def warc_record(kind: str, url: str, payload: bytes, extra: str = "") -> bytes:
    headers = (f"WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2024-10-07T12:00:00Z\r\n"
               f"WARC-Record-ID: <urn:uuid:{abs(hash((kind, url))):032x}>\r\n{extra}Content-Length: {len(payload)}\r\n\r\n")
    return headers.encode() + payload + b"\r\n\r\n"


def http_response(status: str, content_type: str, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}\r\n".encode() + body


ARTICLE = ("The river Wandle rises in Croydon and flows north to the Thames at Wandsworth. "
           "Its water once drove more mills per mile than any other river in England, grinding flour and snuff. ")


def article_html(title: str) -> bytes:
    paragraphs = "".join(f"<p>{title}: {ARTICLE * 2}</p>" for _ in range(3))
    return (f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> | <a href='/a'>About</a></nav>"
            f"<article><h1>{title}</h1>{paragraphs}</article><footer>Copyright 2024</footer></body></html>").encode()


def chunked(body: bytes) -> bytes:
    return b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:100], body[100:])) + b"0\r\n\r\n"


def warc_records() -> list[bytes]:
    http = "Content-Type: application/http; msgtype=response\r\n"
    return [
        warc_record("warcinfo", "", b"isPartOf: CC-MAIN-2024-42\r\npublisher: test\r\n"),
        warc_record("request", "https://mills.org/wandle", b"GET /wandle HTTP/1.1\r\nHost: mills.org\r\n\r\n"),
        warc_record("response", "https://mills.org/wandle",
                    http_response("200 OK", "text/html; charset=utf-8", article_html("Wandle")), http),
        warc_record("metadata", "https://mills.org/wandle", b"fetchTimeMs: 120\r\n"),
        warc_record("response", "https://mills.org/logo.png", http_response("200 OK", "image/png", b"\x89PNG..."), http),
        warc_record("response", "https://mills.org/gone", http_response("404 Not Found", "text/html", b"<p>no</p>"), http),
        warc_record("response", "https://mills.org/hogsmill",
                    http_response("200 OK", "text/html", chunked(gzip.compress(article_html("Hogsmill"), mtime=0)),
                                  "Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n"), http),
    ]


@pytest.mark.parametrize("name", ["crawl.warc", "crawl.warc.gz"])
def test_warc_response_records_become_text_with_url_snapshot_and_time(tmp_path, name):
    records = warc_records()
    path = tmp_path / name
    # Common Crawl gzips each record as its own member; the reader sees one stream either way.
    path.write_bytes(b"".join(gzip.compress(r, mtime=0) for r in records) if name.endswith(".gz") else b"".join(records))
    out = list(read_file(str(path)))
    good = [r for r in out if isinstance(r, RawRecord)]
    assert [g.url for g in good] == ["https://mills.org/wandle", "https://mills.org/hogsmill"]
    assert all("rises in Croydon" in g.text and "Copyright" not in g.text and "About" not in g.text for g in good)
    assert {g.snapshot for g in good} == {"CC-MAIN-2024-42"} and {g.crawl_time for g in good} == {"2024-10-07T12:00:00Z"}
    bad = {r.raw.partition(": ")[0]: r.reason for r in out if isinstance(r, BadRecord)}
    assert bad == {"https://mills.org/logo.png": "not_html", "https://mills.org/gone": "http_status"}


def test_warc_html_without_main_text_is_counted_not_dropped():
    http = "Content-Type: application/http; msgtype=response\r\n"
    data = warc_record("response", "https://empty.org/", http_response("200 OK", "text/html", b"<html><body></body></html>"), http)
    [record] = list(read_warc(io.BytesIO(data), extract_html=readers.html_extractor("test.warc")))
    assert isinstance(record, BadRecord) and record.reason == "no_text_extracted"


def test_warc_without_its_html_extractor_fails_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "crawl.warc"
    path.write_bytes(b"".join(warc_records()))
    monkeypatch.setitem(sys.modules, "trafilatura", None)  # import fails as if it were not installed
    readers._trafilatura_extract.cache_clear()
    try:
        with pytest.raises(InputError, match=r"crawl\.warc: .*trafilatura"):
            list(read_file(str(path)))
    finally:
        readers._trafilatura_extract.cache_clear()
