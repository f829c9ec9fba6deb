"""Pack tokenized documents into fixed-length rows with segment ids and positions, and write them as shards.

A row holds `seq_len + 1` tokens so that inputs (`row[:-1]`) and next-token targets (`row[1:]`) are both
`seq_len` long. Documents are `<bos> text <eos>` and fill rows front to back; one that does not fit in
what is left of a row is split and goes on as a new segment of the next row. Segment ids count from 1
within a row (0 = padding), positions restart at 0 for every segment. A target counts only where the
input and target token belong to the same segment, so no loss or attention crosses a document boundary.

Shard layout (one directory per curriculum stage and split):
    tokens-00000.npy  segment_ids-00000.npy  positions-00000.npy   each int32 (rows, seq_len + 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

FIELDS = ("tokens", "segment_ids", "positions")


class RowPacker:
    """Accumulates documents into rows; `rows()` yields each full row once."""

    def __init__(self, row_len: int, pad_id: int):
        self.row_len, self.pad_id = row_len, pad_id
        self._new_row()

    def _new_row(self):
        self.tokens = np.full(self.row_len, self.pad_id, np.int32)
        self.segment_ids = np.zeros(self.row_len, np.int32)
        self.positions = np.zeros(self.row_len, np.int32)
        self.filled, self.segments = 0, 0

    def _take_row(self) -> dict[str, np.ndarray]:
        row = {"tokens": self.tokens, "segment_ids": self.segment_ids, "positions": self.positions}
        self._new_row()
        return row

    def add(self, document: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Add one document's ids; yields the rows it completes."""
        start = 0
        while start < len(document):
            piece = document[start:start + self.row_len - self.filled]
            end = self.filled + len(piece)
            self.segments += 1
            self.tokens[self.filled:end] = piece
            self.segment_ids[self.filled:end] = self.segments
            self.positions[self.filled:end] = np.arange(len(piece))
            self.filled, start = end, start + len(piece)
            if self.filled == self.row_len:
                yield self._take_row()

    def flush(self) -> Iterator[dict[str, np.ndarray]]:
        if self.filled:
            yield self._take_row()


def pack_documents(
    documents: Iterable[list[int]], seq_len: int, bos_id: int, eos_id: int, pad_id: int
) -> Iterator[dict[str, np.ndarray]]:
    """Rows of `seq_len + 1` tokens from documents of token ids (BOS/EOS added here)."""
    packer = RowPacker(seq_len + 1, pad_id)
    for ids in documents:
        yield from packer.add(np.asarray([bos_id, *ids, eos_id], np.int32))
    yield from packer.flush()


def shard_name(field: str, index: int) -> str:
    return f"{field}-{index:05d}.npy"


def write_shards(rows: Iterable[dict[str, np.ndarray]], directory: str | Path, rows_per_shard: int) -> dict:
    """Write rows as numbered shards; returns counts (rows, shards, real (non-pad) tokens)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer: list[dict[str, np.ndarray]] = []
    counts = {"rows": 0, "shards": 0, "tokens": 0}

    def flush():
        for field in FIELDS:
            np.save(directory / shard_name(field, counts["shards"]), np.stack([row[field] for row in buffer]))
        counts["rows"] += len(buffer)
        counts["tokens"] += int(sum((row["segment_ids"] > 0).sum() for row in buffer))
        counts["shards"] += 1
        buffer.clear()

    for row in rows:
        buffer.append(row)
        if len(buffer) == rows_per_shard:
            flush()
    if buffer:
        flush()
    return counts


def inputs_and_targets(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split (..., seq_len + 1) rows into model inputs and weighted next-token targets."""
    tokens, segments, positions = rows["tokens"], rows["segment_ids"], rows["positions"]
    same_segment = (segments[..., :-1] == segments[..., 1:]) & (segments[..., 1:] > 0)
    return {
        "inputs": tokens[..., :-1],
        "positions": positions[..., :-1],
        "segment_ids": segments[..., :-1],
        "targets": tokens[..., 1:],
        "weights": same_segment.astype(np.float32),
    }
