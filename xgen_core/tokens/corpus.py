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
REPEATS_COLUMN = "repeats"  # a mixture manifest's per-document repeat count
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


def _iter_parquet(filesystem, files: list[str], expand_repeats: bool) -> Iterator[str]:
    dataset = pads.dataset(files, filesystem=filesystem, format="parquet")
    if TEXT_COLUMN not in dataset.schema.names:
        raise XgenError(f"Parquet documents without a {TEXT_COLUMN!r} column: {files[0]}")
    if not (expand_repeats and REPEATS_COLUMN in dataset.schema.names):
        for batch in dataset.to_batches(columns=[TEXT_COLUMN], batch_size=READ_BATCH_ROWS, use_threads=False):
            yield from (text for text in batch.column(0).to_pylist() if text)
        return
    yield from _iter_repeated(dataset)


def _iter_repeated(dataset) -> Iterator[str]:
    """A mixture manifest's upsampling: pass r yields every document with more than r repeats, so the copies of
    one document are spread over the stage instead of sitting next to each other."""
    columns = [TEXT_COLUMN, REPEATS_COLUMN]
    most = max((max(b.column(0).to_pylist(), default=0) for b in dataset.to_batches(columns=[REPEATS_COLUMN])), default=0)
    for repeat in range(int(most)):
        for batch in dataset.to_batches(columns=columns, batch_size=READ_BATCH_ROWS, use_threads=False):
            texts, repeats = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            yield from (text for text, n in zip(texts, repeats) if text and n > repeat)


def _iter_jsonl(filesystem, files: list[str]) -> Iterator[str]:
    for name in files:
        with filesystem.open_input_stream(name) as stream:
            for line in stream.read().decode("utf-8").splitlines():
                if line.strip():
                    text = json.loads(line).get(TEXT_COLUMN)
                    if text:
                        yield text


def iter_stage_documents(uri: str, expand_repeats: bool = True) -> Iterator[str]:
    """Texts of the documents at `uri` (local path, file:// or gs://), in a deterministic order; a mixture
    manifest's documents as often as its `repeats` column says (once each with expand_repeats=False)."""
    filesystem, path = _filesystem_and_path(uri)
    files = _files_under(filesystem, path)
    parquet = [f for f in files if f.endswith(".parquet")]
    jsonl = [f for f in files if f.endswith((".jsonl", ".json"))]
    if parquet:
        yield from _iter_parquet(filesystem, parquet, expand_repeats)
    elif jsonl:
        yield from _iter_jsonl(filesystem, jsonl)
    else:
        raise XgenError(f"no .parquet or .jsonl documents under {uri}")


def curriculum_sources(mixture_uri: str, stage_names: list[str]) -> dict[str, str]:
    """URI of each curriculum stage's manifest in the mixture artifact (`{mixture}/stages/{stage}`)."""
    return {name: f"{mixture_uri.rstrip('/')}/stages/{name}" for name in stage_names}
