"""Orbax checkpoints of the whole run: train state (params, optimizer, step, RNG), the data iterator's
state and a JSON record of the run, saved asynchronously, keeping the newest N, to a local path or gs://.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed in the
middle of a save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from xgen_core.storage import point_gcs_libraries_at_emulator


def _directory(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).resolve())


class Checkpointer:
    def __init__(self, uri: str, keep: int, asynchronous: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True
        )
        point_gcs_libraries_at_emulator()
        self.manager = ocp.CheckpointManager(_directory(uri), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore(self, step: int, state_like, shardings):
        """(state, data iterator state, meta) of `step`, with arrays placed by `shardings`."""
        abstract = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            state_like, shardings,
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data_iter=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["data_iter"], restored["meta"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
