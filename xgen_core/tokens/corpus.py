"""Documents of one curriculum stage, read in a fixed order.

`iter_stage_documents(uri)` is the one place that knows the on-disk form of a stage's documents: a Parquet
file or dataset directory with a `text` column (the ingest layer, the mixture stage's per-stage manifests),
or JSON-lines files with a `text` field (the sample corpus). Files are read in sorted order, rows in file
order, so the same input always gives the same token stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from xgen_core.errors import XgenError

TEXT_COLUMN = "text"
READ_BATCH_ROWS = 1024


def _filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    filesystem, path = pafs.FileSystem.from_uri(uri if "://" in uri else f"file://{_absolute(uri)}")
    return filesystem, path


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).resolve())


def _files_under(filesystem: pafs.FileSystem, path: str) -> list[str]:
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise XgenError(f"no documents at {path}")
    if info.type == pafs.FileType.File:
        return [path]
    selector = pafs.FileSelector(path, recursive=True)
    names = [
        i.path for i in filesystem.get_file_info(selector)
        if i.type == pafs.FileType.File and not i.base_name.startswith(("_", "."))
    ]
    return sorted(names)


def _iter_parquet(filesystem, files: list[str]) -> Iterator[str]:
    dataset = pads.dataset(files, filesystem=filesystem, format="parquet")
    if TEXT_COLUMN not in dataset.schema.names:
        raise XgenError(f"Parquet documents without a {TEXT_COLUMN!r} column: {files[0]}")
    for batch in dataset.to_batches(columns=[TEXT_COLUMN], batch_size=READ_BATCH_ROWS, use_threads=False):
        yield from (text for text in batch.column(0).to_pylist() if text)


def _iter_jsonl(filesystem, files: list[str]) -> Iterator[str]:
    for name in files:
        with filesystem.open_input_stream(name) as stream:
            for line in stream.read().decode("utf-8").splitlines():
                if line.strip():
                    text = json.loads(line).get(TEXT_COLUMN)
                    if text:
                        yield text


def iter_stage_documents(uri: str) -> Iterator[str]:
    """Texts of the documents at `uri` (local path, file:// or gs://), in a deterministic order."""
    filesystem, path = _filesystem_and_path(uri)
    files = _files_under(filesystem, path)
    parquet = [f for f in files if f.endswith(".parquet")]
    jsonl = [f for f in files if f.endswith((".jsonl", ".json"))]
    if parquet:
        yield from _iter_parquet(filesystem, parquet)
    elif jsonl:
        yield from _iter_jsonl(filesystem, jsonl)
    else:
        raise XgenError(f"no .parquet or .jsonl documents under {uri}")


def curriculum_sources(inputs: dict[str, str], stage_names: list[str]) -> dict[str, str]:
    """URI of each curriculum stage's documents, from the stage's upstream artifacts.

    The mixture stage writes one document set per curriculum stage (`{mixture}/{stage}`); without it
    upstream, every curriculum stage reads the whole ingested corpus (`{ingest}/data`).
    """
    if "mixture" in inputs:
        return {name: f"{inputs['mixture'].rstrip('/')}/{name}" for name in stage_names}
    if "ingest" in inputs:
        return {name: f"{inputs['ingest'].rstrip('/')}/data" for name in stage_names}
    raise XgenError(f"no document source among the inputs {sorted(inputs)}: expected mixture or ingest")
