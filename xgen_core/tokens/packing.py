"""Pack tokenized documents into fixed-length rows, write them as token-only shards, and derive the rest on read.

A row holds `seq_len + 1` tokens so that inputs (`row[:-1]`) and next-token targets (`row[1:]`) are both
`seq_len` long. Documents are `<bos> text <eos>` and fill rows front to back; one that does not fit in
what is left of a row is split and goes on as a new segment of the next row. Only the last row of a shard set
ends in padding, unless documents are kept whole (`whole_documents`): then a document that fits in a row but not
in what is left of the current one starts the next row, and the current row ends in padding (a retrieval sample
split in two would put its question and answer in a row without the text that answers it).

Shards store the tokens alone (uint32, 4 bytes a token): segment ids and positions follow from the boundaries
and are derived when rows are read (`row_fields`). A segment starts at the row's first token and at every BOS;
padding is segment 0. Segment ids count from 1 within a row, positions restart at 0 for every segment. A
target counts only where the input and target token belong to the same segment, so no loss or attention
crosses a document boundary. The pad and BOS ids never come from text (`encode_documents` encodes special-token
strings in documents as plain text), so the boundaries are unambiguous.

Shard layout (one directory per curriculum stage and split, local or gs://):
    tokens-00000.npy   uint32 (rows, seq_len + 1)
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import numpy as np

from xgen_core.storage import join, store_for

TOKEN_DTYPE = np.uint32
FIELDS = ("tokens", "segment_ids", "positions")


class RowPacker:
    """Accumulates documents into rows of tokens; `add` and `flush` yield each full row once."""

    def __init__(self, row_len: int, pad_id: int, whole_documents: bool = False):
        self.row_len, self.pad_id, self.whole_documents = row_len, pad_id, whole_documents
        self._new_row()

    def _new_row(self):
        self.tokens = np.full(self.row_len, self.pad_id, TOKEN_DTYPE)
        self.filled = 0

    def _take_row(self) -> np.ndarray:
        row = self.tokens
        self._new_row()
        return row

    def add(self, document: np.ndarray) -> Iterator[np.ndarray]:
        """Add one document's ids (BOS and EOS included); yields the rows it completes."""
        if self.whole_documents and self.filled and self.filled + len(document) > self.row_len >= len(document):
            yield self._take_row()
        start = 0
        while start < len(document):
            piece = document[start:start + self.row_len - self.filled]
            self.tokens[self.filled:self.filled + len(piece)] = piece
            self.filled, start = self.filled + len(piece), start + len(piece)
            if self.filled == self.row_len:
                yield self._take_row()

    def flush(self) -> Iterator[np.ndarray]:
        if self.filled:
            yield self._take_row()


def with_boundaries(ids: list[int], bos_id: int, eos_id: int) -> np.ndarray:
    return np.asarray([bos_id, *ids, eos_id], TOKEN_DTYPE)


def pack_documents(documents: Iterable[list[int]], seq_len: int, bos_id: int, eos_id: int,
                   pad_id: int, whole_documents: bool = False) -> Iterator[np.ndarray]:
    """Token rows of `seq_len + 1` from documents of token ids (BOS/EOS added here)."""
    packer = RowPacker(seq_len + 1, pad_id, whole_documents)
    for ids in documents:
        yield from packer.add(with_boundaries(ids, bos_id, eos_id))
    yield from packer.flush()


def row_fields(tokens: np.ndarray, bos_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """Tokens, segment ids and positions of (..., row_len) token rows, from the BOS and padding boundaries."""
    tokens = np.asarray(tokens)
    index = np.broadcast_to(np.arange(tokens.shape[-1]), tokens.shape)
    starts = (index == 0) | (tokens == bos_id)
    real = tokens != pad_id
    segment_ids = np.where(real, np.cumsum(starts, axis=-1), 0)
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=-1)
    positions = np.where(real, index - last_start, 0)
    return {"tokens": tokens.astype(np.int32), "segment_ids": segment_ids.astype(np.int32),
            "positions": positions.astype(np.int32)}


def shard_name(index: int) -> str:
    return f"tokens-{index:05d}.npy"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class ShardWriter:
    """Writes rows as numbered token shards straight to a directory URI (local, file:// or gs://)."""

    def __init__(self, directory_uri: str, rows_per_shard: int, pad_id: int):
        self.directory, self.rows_per_shard, self.pad_id = directory_uri, rows_per_shard, pad_id
        self.store = store_for(directory_uri)
        self.buffer: list[np.ndarray] = []
        self.counts = {"rows": 0, "shards": 0, "tokens": 0, "shard_rows": []}

    def add(self, row: np.ndarray) -> None:
        self.buffer.append(row)
        if len(self.buffer) == self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        shard = np.stack(self.buffer)
        self.store.write_bytes(join(self.directory, shard_name(self.counts["shards"])), npy_bytes(shard))
        self.counts["rows"] += len(shard)
        self.counts["tokens"] += int((shard != self.pad_id).sum())
        self.counts["shard_rows"].append(len(shard))
        self.counts["shards"] += 1
        self.buffer.clear()

    def close(self) -> dict:
        """Write the last, partial shard; counts: rows, shards, real (non-pad) tokens, rows of each shard."""
        if self.buffer:
            self._flush()
        return self.counts


def write_shards(rows: Iterable[np.ndarray], directory_uri: str, rows_per_shard: int, pad_id: int) -> dict:
    writer = ShardWriter(str(directory_uri), rows_per_shard, pad_id)
    for row in rows:
        writer.add(row)
    return writer.close()


def inputs_and_targets(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split (..., seq_len + 1) rows (see `row_fields`) into model inputs and weighted next-token targets."""
    tokens, segments, positions = rows["tokens"], rows["segment_ids"], rows["positions"]
    same_segment = (segments[..., :-1] == segments[..., 1:]) & (segments[..., 1:] > 0)
    return {
        "inputs": tokens[..., :-1],
        "positions": positions[..., :-1],
        "segment_ids": segments[..., :-1],
        "targets": tokens[..., 1:],
        "weights": same_segment.astype(np.float32),
    }
