"""Deterministic, checkpointable batches from packed shards, switching curriculum stage by step.

Each stage's rows are a Grain MapDataset (random access over memory-mapped shards) shuffled with a
fixed seed, repeated and batched; the Grain iterator's state (a small dict) is what a checkpoint keeps.
`CurriculumLoader.batch_for_step(step)` serves the stage that owns `step`, so the data mixture switches
at exactly the step the learning-rate schedule changes phase.
"""

from __future__ import annotations

import bisect
import dataclasses
from pathlib import Path

import grain
import numpy as np

from xgen_core.errors import XgenError
from xgen_core.tokens.packing import FIELDS, shard_name


class PackedRows:
    """Random-access rows over one directory of shards (Grain's data source protocol)."""

    def __init__(self, directory: str | Path):
        directory = Path(directory)
        count = len(list(directory.glob("tokens-*.npy")))
        if count == 0:
            raise XgenError(f"no packed shards in {directory}")
        self.shards = [
            {field: np.load(directory / shard_name(field, i), mmap_mode="r") for field in FIELDS}
            for i in range(count)
        ]
        self.starts = np.cumsum([0] + [len(s["tokens"]) for s in self.shards])
        self.row_len = self.shards[0]["tokens"].shape[1]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        shard = bisect.bisect_right(self.starts, index) - 1
        local = index - self.starts[shard]
        return {field: np.asarray(self.shards[shard][field][local]) for field in FIELDS}


def stacked(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {field: np.stack([row[field] for row in rows]) for field in FIELDS}


def batched_rows(directory: str | Path, batch_rows: int, seed: int, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
    """Endless shuffled batches of `batch_rows` rows; each process reads its own slice of the rows."""
    rows = grain.MapDataset.source(PackedRows(directory))
    rows = rows[process_index::process_count]
    if len(rows) < batch_rows:
        raise XgenError(f"{directory} holds {len(rows)} rows for this process, fewer than one batch ({batch_rows})")
    return rows.shuffle(seed=seed).repeat().batch(batch_rows, drop_remainder=True, batch_fn=stacked).to_iter_dataset()


@dataclasses.dataclass(frozen=True)
class StageData:
    name: str
    directory: str
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
            dataset = batched_rows(stage.directory, self.batch_rows, self.seed + stage_index,
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
