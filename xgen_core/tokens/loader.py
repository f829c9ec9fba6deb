"""Deterministic, checkpointable batches from packed shards, switching curriculum stage by step.

Each host reads only its own shards of a stage (shard i belongs to host i mod hosts), row by row with ranged
reads straight from the store (local, file:// or gs://): nothing is copied to local disk first. A host's rows
are a Grain MapDataset shuffled with a fixed seed, repeated and batched; segment ids and positions are derived
from the token boundaries per batch (`packing.row_fields`). The Grain iterator's state (a small dict) is what a
checkpoint keeps. `CurriculumLoader.batch_for_step(step)` serves the stage that owns `step`, so the data mixture
switches at exactly the step the learning-rate schedule changes phase.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import threading

import grain
import numpy as np

from xgen_core.errors import XgenError
from xgen_core.storage import join, store_for
from xgen_core.tokens.packing import row_fields, shard_name

NPY_HEADER_BYTES = 4096  # enough for any header np.save writes for a 2-D array


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """One split of one curriculum stage: where its shards are and how many rows each holds (from stages.json)."""

    uri: str
    shard_rows: tuple[int, ...]
    bos_id: int
    pad_id: int

    def shards_of(self, process_index: int, process_count: int) -> list[int]:
        """The shards host `process_index` of `process_count` reads."""
        if len(self.shard_rows) < process_count:
            raise XgenError(f"{self.uri} holds {len(self.shard_rows)} shards, fewer than the {process_count} hosts "
                            f"reading it: pack with a smaller pack.rows_per_shard")
        return list(range(process_index, len(self.shard_rows), process_count))


class _ShardFile:
    """Rows of one .npy token shard, each fetched with one ranged read."""

    def __init__(self, uri: str):
        self.uri, self.store = uri, store_for(uri)
        self._layout = None
        self._lock = threading.Lock()

    def layout(self) -> tuple[int, tuple[int, ...], np.dtype]:
        with self._lock:
            if self._layout is None:
                head = io.BytesIO(self.store.read_range(self.uri, 0, NPY_HEADER_BYTES))
                major, _ = np.lib.format.read_magic(head)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran_order, dtype = read_header(head)
                if fortran_order or len(shape) != 2:
                    raise XgenError(f"{self.uri}: not a C-ordered 2-D token shard")
                self._layout = (head.tell(), shape, dtype)
            return self._layout

    def row(self, index: int) -> np.ndarray:
        offset, shape, dtype = self.layout()
        row_bytes = shape[1] * dtype.itemsize
        data = self.store.read_range(self.uri, offset + index * row_bytes, row_bytes)
        return np.frombuffer(data, dtype)


class PackedRows:
    """Random-access token rows of this host's shards of a set (Grain's data source protocol)."""

    def __init__(self, shards: ShardSet, process_index: int = 0, process_count: int = 1):
        self.shard_set = shards
        self.owned = shards.shards_of(process_index, process_count)
        self.files = [_ShardFile(join(shards.uri, shard_name(i))) for i in self.owned]
        self.starts = np.cumsum([0] + [shards.shard_rows[i] for i in self.owned])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        shard = bisect.bisect_right(self.starts, index) - 1
        return self.files[shard].row(int(index - self.starts[shard]))

    def fields(self, rows: list[np.ndarray]) -> dict[str, np.ndarray]:
        return row_fields(np.stack(rows), self.shard_set.bos_id, self.shard_set.pad_id)


def batched_rows(shards: ShardSet, batch_rows: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
    """Endless shuffled batches of `batch_rows` rows from this process's own shards."""
    source = PackedRows(shards, process_index, process_count)
    if len(source) < batch_rows:
        raise XgenError(f"{shards.uri} holds {len(source)} rows for this process, fewer than one batch ({batch_rows})")
    rows = grain.MapDataset.source(source)
    return rows.shuffle(seed=seed).repeat().batch(batch_rows, drop_remainder=True,
                                                  batch_fn=source.fields).to_iter_dataset()


@dataclasses.dataclass(frozen=True)
class StageData:
    name: str
    shards: ShardSet
    start_step: int


class CurriculumLoader:
    """Batches for a given step from the curriculum stage that step belongs to."""

    def __init__(self, stages: list[StageData], batch_rows: int, seed: int, process_index: int = 0,
                 process_count: int = 1):
        self.stages = sorted(stages, key=lambda s: s.start_step)
        self.batch_rows, self.seed = batch_rows, seed
        self.process_index, self.process_count = process_index, process_count
        self._iterators: dict[str, grain.DatasetIterator] = {}

    def stage_for_step(self, step: int) -> StageData:
        starts = [s.start_step for s in self.stages]
        return self.stages[max(bisect.bisect_right(starts, step) - 1, 0)]

    def _iterator(self, stage_index: int, stage: StageData) -> grain.DatasetIterator:
        if stage.name not in self._iterators:
            dataset = batched_rows(stage.shards, self.batch_rows, self.seed + stage_index,
                                   self.process_index, self.process_count)
            self._iterators[stage.name] = iter(dataset)
        return self._iterators[stage.name]

    def batch_for_step(self, step: int) -> tuple[StageData, dict[str, np.ndarray]]:
        stage = self.stage_for_step(step)
        return stage, next(self._iterator(self.stages.index(stage), stage))

    def get_state(self) -> dict:
        return {name: iterator.get_state() for name, iterator in self._iterators.items()}

    def set_state(self, state: dict) -> None:
        for index, stage in enumerate(self.stages):
            if stage.name in state:
                self._iterator(index, stage).set_state(state[stage.name])
