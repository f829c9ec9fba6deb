"""Documents of one curriculum stage, read in a fixed order.

`iter_stage_documents(uri)` (and `iter_stage_clustered`, which adds dedup's cluster id) is the one place that
knows the on-disk form of a stage's documents: a Parquet file or dataset directory with a `text` column (the
ingest layer, the mixture stage's per-stage manifests), or JSON-lines files with a `text` field (the sample
corpus). Files are read in sorted order, rows in file order, so the same input always gives the same token stream.

The held-out split is by dedup cluster (`is_heldout_cluster`): near-duplicate variants of one cluster are all
trained on or all held out, and the tokenizer learns from the training side only.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from xgen_core.errors import XgenError

TEXT_COLUMN = "text"
CLUSTER_COLUMN = "cluster_id"  # dedup's cluster of near-duplicate variants, carried through the mixture
HELDOUT_BUCKETS = 10_000
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


def _iter_parquet(filesystem, files: list[str], columns: list[str], expand_repeats: bool) -> Iterator[tuple]:
    dataset = pads.dataset(files, filesystem=filesystem, format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise XgenError(f"Parquet documents without the column(s) {missing}: {files[0]}")
    if not (expand_repeats and REPEATS_COLUMN in dataset.schema.names):
        for batch in dataset.to_batches(columns=columns, batch_size=READ_BATCH_ROWS, use_threads=False):
            yield from (row for row in zip(*(c.to_pylist() for c in batch.columns)) if row[0])
        return
    yield from _iter_repeated(dataset, columns)


def _iter_repeated(dataset, columns: list[str]) -> Iterator[tuple]:
    """A mixture manifest's upsampling: pass r yields every document with more than r repeats, so the copies of
    one document are spread over the stage instead of sitting next to each other."""
    most = max((max(b.column(0).to_pylist(), default=0) for b in dataset.to_batches(columns=[REPEATS_COLUMN])), default=0)
    for repeat in range(int(most)):
        for batch in dataset.to_batches(columns=[*columns, REPEATS_COLUMN], batch_size=READ_BATCH_ROWS,
                                        use_threads=False):
            values = [c.to_pylist() for c in batch.columns]
            yield from (row[:-1] for row in zip(*values) if row[0] and row[-1] > repeat)


def _iter_jsonl(filesystem, files: list[str], columns: list[str]) -> Iterator[tuple]:
    for name in files:
        with filesystem.open_input_stream(name) as stream:
            for number, line in enumerate(stream.read().decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not record.get(TEXT_COLUMN):
                    continue
                missing = [c for c in columns if c not in record]
                if missing:
                    raise XgenError(f"{name} line {number}: no {missing} field")
                yield tuple(record[c] for c in columns)


def _iter_rows(uri: str, columns: list[str], expand_repeats: bool) -> Iterator[tuple]:
    filesystem, path = _filesystem_and_path(uri)
    files = _files_under(filesystem, path)
    parquet = [f for f in files if f.endswith(".parquet")]
    jsonl = [f for f in files if f.endswith((".jsonl", ".json"))]
    if parquet:
        yield from _iter_parquet(filesystem, parquet, columns, expand_repeats)
    elif jsonl:
        yield from _iter_jsonl(filesystem, jsonl, columns)
    else:
        raise XgenError(f"no .parquet or .jsonl documents under {uri}")


def iter_stage_documents(uri: str, expand_repeats: bool = True) -> Iterator[str]:
    """Texts of the documents at `uri` (local path, file:// or gs://), in a deterministic order; a mixture
    manifest's documents as often as its `repeats` column says (once each with expand_repeats=False)."""
    for (text,) in _iter_rows(uri, [TEXT_COLUMN], expand_repeats):
        yield text


def iter_stage_clustered(uri: str, expand_repeats: bool = True) -> Iterator[tuple[str, str]]:
    """(text, cluster id) of the documents at `uri`, in the order of `iter_stage_documents`: dedup's cluster id
    travels with every document so that the held-out split keeps each cluster's near-duplicates together."""
    for text, cluster in _iter_rows(uri, [TEXT_COLUMN, CLUSTER_COLUMN], expand_repeats):
        yield text, str(cluster)


def is_heldout_cluster(cluster_id: str, heldout_fraction: float) -> bool:
    """Whether a dedup cluster is held out: every variant of a cluster lands on the same side, in every stage."""
    return zlib.crc32(cluster_id.encode("utf-8")) % HELDOUT_BUCKETS < heldout_fraction * HELDOUT_BUCKETS


def training_texts(documents: Iterable[tuple[str, str]], heldout_fraction: float) -> Iterator[str]:
    """Texts of the documents whose cluster is not held out (what the tokenizer may learn from)."""
    for text, cluster in documents:
        if not is_heldout_cluster(cluster, heldout_fraction):
            yield text


def curriculum_sources(mixture_uri: str, stage_names: list[str]) -> dict[str, str]:
    """URI of each curriculum stage's manifest in the mixture artifact (`{mixture}/stages/{stage}`)."""
    return {name: f"{mixture_uri.rstrip('/')}/stages/{name}" for name in stage_names}
