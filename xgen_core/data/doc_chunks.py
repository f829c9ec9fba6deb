"""Documents read and written by Python tasks in fixed row ranges of Parquet files ("chunks").

A Spark job that hashes or rewrites every text pays twice when the texts cross the JVM: Parquet decoding into
rows, then Arrow conversion to Python and back. Stages whose per-document work is Python (MinHash, rewriting
documents with their annotations) instead ship only chunk descriptors through Spark: each task reads its rows with
pyarrow from any URI the artifact store reaches (local, file://, gs://) and writes its output file itself. Spark
keeps what it is good at: the shuffles and joins over the slim per-document columns.

Chunks depend only on the input files (their names and row counts), never on the cluster size, so output file
`part-{chunk:05d}.parquet` holds the same rows on a laptop and on Dataproc.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from xgen_core.data.readers import input_kind, is_data_file
from xgen_core.errors import XgenError
from xgen_core.storage import is_gcs, iter_files, join, normalize_uri, store_for

# Row groups of written files: small enough for downstream Spark readers to split a file across tasks.
ROW_GROUP_ROWS = 8192


@dataclass(frozen=True)
class Chunk:
    index: int
    uri: str
    row_start: int
    row_count: int


def data_files(uris: list[str]) -> list[str]:
    """Data files under the URIs (files or folders, recursive), skipping bookkeeping files (_SUCCESS, .crc, manifests)."""
    found = []
    for uri in uris:
        files = [info.uri for info in iter_files([uri])]
        if not files and not store_for(uri).exists(normalize_uri(uri)):
            raise XgenError(f"input {uri} does not exist")
        found.extend(filter(is_data_file, files))
    return sorted(found)


def input_format(files: list[str], described: str) -> str:
    if not files:
        raise XgenError(f"input {described} holds no data files")
    if all(name.endswith(".parquet") for name in files):  # pyarrow reads Parquet files, not gzipped ones
        return "parquet"
    if all(input_kind(name) == "jsonl" for name in files):
        return "jsonl"
    kinds = sorted({Path(name).name.split(".", 1)[-1] for name in files})
    raise XgenError(f"input {described} mixes or lacks known formats (.jsonl / .parquet): found {kinds}")


def open_parquet(uri: str) -> pq.ParquetFile:
    return pq.ParquetFile(store_for(uri).open_read(uri) if is_gcs(uri) else normalize_uri(uri))


def plan_chunks(files: list[str], rows_per_chunk: int) -> tuple[list[Chunk], pa.Schema]:
    """Even row ranges of at most rows_per_chunk rows inside each file, and the files' unified schema.

    Only the Parquet footers are read.
    """
    chunks, schemas = [], []
    for uri in files:
        metadata = open_parquet(uri).metadata
        schemas.append(metadata.schema.to_arrow_schema())
        rows = metadata.num_rows
        n_chunks = max(1, -(-rows // rows_per_chunk))
        bounds = [rows * i // n_chunks for i in range(n_chunks + 1)]
        for start, stop in zip(bounds, bounds[1:]):
            chunks.append(Chunk(len(chunks), uri, start, stop - start))
    schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    return chunks, schema


def read_chunk(chunk: Chunk) -> pa.Table:
    """The chunk's rows in file order (only the row groups covering its range are read)."""
    parquet = open_parquet(chunk.uri)
    metadata = parquet.metadata
    groups, first_row, offset = [], None, 0
    stop = chunk.row_start + chunk.row_count
    for group in range(metadata.num_row_groups):
        group_rows = metadata.row_group(group).num_rows
        if offset + group_rows > chunk.row_start and offset < stop:
            groups.append(group)
            first_row = offset if first_row is None else first_row
        offset += group_rows
    if not groups:
        return parquet.schema_arrow.empty_table()
    table = parquet.read_row_groups(groups)
    return table.slice(chunk.row_start - first_row, chunk.row_count)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """table with exactly schema's columns, in its order: missing columns as nulls, the rest cast."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def write_parquet(table: pa.Table, uri: str, **options) -> None:
    """Write one Parquet file; a local file appears whole (written aside, then renamed) or not at all.

    `options` go to pyarrow's write_table.
    """
    if is_gcs(uri):
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=ROW_GROUP_ROWS, **options)
        store_for(uri).write_bytes(uri, buffer.getvalue())
        return
    path = Path(normalize_uri(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, aside, row_group_size=ROW_GROUP_ROWS, **options)
    os.replace(aside, path)


def part_uri(folder: str, chunk: Chunk) -> str:
    return join(folder, f"part-{chunk.index:05d}.parquet")
