"""Readers turn every input record into a RawRecord or a BadRecord with a reason; they never raise."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from xgen_core.data.readers import BadRecord, RawRecord, input_kind, is_data_file, read_file, read_jsonl, read_wet
from xgen_core.data.sample_corpus import Doc, wet_bytes


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
    records = list(read_wet(io.BytesIO(gzip.decompress(wet_bytes(docs, "CC-MAIN-2024-26")))))
    assert [r.text for r in records] == [d.text for d in docs]
    assert {r.snapshot for r in records} == {"CC-MAIN-2024-26"}
    assert records[1].url == "https://s1.org/" and records[1].crawl_time == "2024-06-01T00:00:00Z"


def test_wet_garbage_and_truncation_are_reported_not_raised():
    docs = [Doc("d", "body", "https://a.org/", "", "2024-06-01T00:00:00Z", "web")]
    data = gzip.decompress(wet_bytes(docs, "CC-MAIN-2024-26"))
    broken = b"junk line\n" + data + b"WARC/1.0\r\nWARC-Type: conversion\r\nContent-Length: 999\r\n\r\nshort"
    records = list(read_wet(io.BytesIO(broken)))
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
    assert input_kind("part-0.parquet") == "parquet" and input_kind("x.csv") is None
    assert not is_data_file("out/_SUCCESS") and not is_data_file("out/manifest.json")
    assert not is_data_file("out/.part-0.crc") and is_data_file("out/part-0.parquet")
