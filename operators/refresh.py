"""What each task of an xgen_data_refresh run adds to the config: the snapshot, its files, and what it appends to.

The snapshot is the `snapshot` param, else the run's data interval start formatted with
`orchestration.refresh.snapshot_format` (a scheduled or backfilled weekly run names its own week). Its files are the
`inputs` param, else `orchestration.refresh.inputs` with {snapshot} filled in, else the profile's ingest.inputs.
The new snapshot is ingested as a new partition of the newest curated dataset of another snapshot (the latest
`xgen_curated_dataset` Asset event under the same artifact root: ingest.append_to) and dedup reuses that run's
MinHash signatures (dedup.reuse_signatures_from). Every task of a run computes the same overrides, so downstream
stages resolve the same versions; a cleared task finds the same previous event (its own run's event names its own
snapshot and is passed over).
"""

from __future__ import annotations

import json
from datetime import datetime

from airflow.sdk import Param

from operators.dag_factory import OPTIONAL
from xgen_core.config import load_config
from xgen_core.stages import STAGES
from xgen_core.storage import normalize_uri

REFRESH_PARAMS = {
    "snapshot": Param("", type=OPTIONAL["string"], pattern=r"^[A-Za-z0-9._-]*$",
                      description="crawl snapshot name, e.g. CC-MAIN-2024-51; empty = from the run's data interval"),
    "inputs": Param([], type=OPTIONAL["array"], items={"type": "string"},
                    description="the snapshot's crawl files or folders; empty = orchestration.refresh.inputs"),
    "append": Param(True, type="boolean",
                    description="append to the newest curated dataset of another snapshot and reuse its signatures"),
}


def refresh_overrides(operator, context) -> list[str]:
    from operators.dag_factory import family, selection_and_backend

    params = context["params"]
    cfg = load_config(params.get("profile") or "tiny", list(params.get("overrides") or []))
    snapshot = params.get("snapshot") or snapshot_of_run(context, cfg.orchestration.refresh.snapshot_format)
    overrides = [*selection_and_backend(operator, context), f"ingest.default_snapshot={json.dumps(snapshot)}"]
    template = cfg.orchestration.refresh.inputs
    inputs = list(params.get("inputs") or []) or ([template.replace("{snapshot}", snapshot)] if template else [])
    if inputs:
        overrides.append(f"ingest.inputs={json.dumps(inputs)}")
    if params.get("append", True):
        root = normalize_uri(params.get("root") or cfg.root)
        previous = previous_curated(context["inlet_events"][family("xgen_data_refresh").asset], snapshot, root)
        if previous:
            for stage, key in REUSE_FLAGS:
                overrides.append(f"{key}={json.dumps(previous[stage])}")
    return overrides


def reuse_flags() -> tuple[tuple[str, str], ...]:
    """(stage, config key) of the stage-table flags that build on an earlier artifact of the same stage: the ingest
    that is appended to (ingest.append_to) and the dedup whose signatures are reused (dedup.reuse_signatures_from)."""
    return tuple((stage.name, flag.key) for stage in STAGES for flag in stage.flags
                 if flag.key.endswith((".append_to", ".reuse_signatures_from")))


REUSE_FLAGS = reuse_flags()


def snapshot_of_run(context, snapshot_format: str) -> str:
    """Scheduled and backfilled runs have a data interval; a manual run without one uses the time it ran after."""
    start = context.get("data_interval_start")
    if start is None:
        start = context["dag_run"].run_after
    if isinstance(start, str):
        start = datetime.fromisoformat(start)
    return start.strftime(snapshot_format)


def previous_curated(events, snapshot: str, root: str) -> dict | None:
    """The newest curated-dataset event of another snapshot whose artifacts live under `root`."""
    for event in reversed(list(events)):
        extra = event.extra or {}
        artifacts = extra.get("artifacts") or {}
        needed = [stage for stage, _ in REUSE_FLAGS]
        if extra.get("snapshot") == snapshot or not set(needed) <= set(artifacts):
            continue
        if all(normalize_uri(artifacts[stage]).startswith(root.rstrip("/") + "/") for stage in needed):
            return {**{stage: artifacts[stage] for stage in needed}, "snapshot": extra.get("snapshot")}
    return None
