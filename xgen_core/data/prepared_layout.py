"""Where an ingest artifact's documents live: one partition per crawl snapshot, some of them in earlier artifacts.

An ingest artifact keeps its own documents under `data/snapshot=<snapshot>/` (the `snapshot` column stays inside
the files too, so a reader of single files loses nothing). An ingest that appends to an earlier artifact
(`ingest.append_to`) writes only the new snapshots' partitions and lists the earlier ones by reference in its
manifest's `layout`: nothing is copied, on a local disk or in a bucket alike, and each reference names the
committed artifact that holds the files, so a chain of appends never has to be followed.

manifest["layout"] = {
    "partition_key": "snapshot",
    "partitions": [{"snapshot": "CC-MAIN-2024-10", "artifact": "gs://b/ingest-1a2b" | None, "version": "1a2b" | None,
                    "path": "data/snapshot=CC-MAIN-2024-10", "documents": 1234}, ...],   # sorted by snapshot
    "quarantine": [{"artifact": ... | None, "version": ... | None, "path": "quarantine"}, ...],
}
`artifact` None means the artifact that holds the manifest. Consumers call `partitions(uri)` or `document_uris(uri)`.
Spark reads `data/` as it is; pyarrow's dataset reader of the whole folder needs `partitioning=None` (it would
otherwise add a second, dictionary-typed `snapshot` column from the folder names).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from xgen_core import artifacts
from xgen_core.errors import InputError
from xgen_core.storage import join, normalize_uri

PARTITION_KEY = "snapshot"
DATA_DIR = "data"
QUARANTINE_DIR = "quarantine"


@dataclass(frozen=True)
class Partition:
    snapshot: str
    uri: str  # absolute: the folder of Parquet files holding this snapshot's documents
    artifact: str  # the committed ingest artifact that wrote them
    version: str
    documents: int


def partition_path(snapshot: str) -> str:
    """Hive-style folder name (Spark and pyarrow read it as a partition); the value %-escaped as Spark does."""
    return f"{DATA_DIR}/{PARTITION_KEY}={quote(snapshot, safe='')}"


def own_layout(documents_by_snapshot: dict[str, int]) -> dict:
    """The layout of an artifact that holds all its partitions itself."""
    return {
        "partition_key": PARTITION_KEY,
        "partitions": [
            {"snapshot": snapshot, "artifact": None, "version": None, "path": partition_path(snapshot),
             "documents": documents}
            for snapshot, documents in sorted(documents_by_snapshot.items())
        ],
        "quarantine": [{"artifact": None, "version": None, "path": QUARANTINE_DIR}],
    }


def appended_layout(earlier: dict, documents_by_snapshot: dict[str, int]) -> dict:
    """The earlier artifact's partitions (its `read_layout`) by reference, then this run's; a snapshot already
    there is refused: its documents would be in the layout twice."""
    earlier_uri = earlier["uri"]
    repeated = sorted(set(documents_by_snapshot) & {p["snapshot"] for p in earlier["partitions"]})
    if repeated:
        raise InputError(
            f"ingest.append_to={earlier_uri} already holds snapshot(s) {', '.join(repeated)}: an append adds new "
            "snapshots only (ingest the inputs on their own, or append them to an artifact without those snapshots)"
        )
    layout = own_layout(documents_by_snapshot)
    layout["partitions"] = sorted(earlier["partitions"] + layout["partitions"], key=lambda p: p["snapshot"])
    layout["quarantine"] = earlier["quarantine"] + layout["quarantine"]
    return layout


def read_layout(uri: str, named_as: str = "") -> dict:
    """A committed ingest artifact's layout with every reference made absolute (None -> the artifact itself)."""
    uri = normalize_uri(uri)
    if not artifacts.is_committed(uri):
        raise InputError(f"{named_as}{uri} is not a committed artifact (no {artifacts.SUCCESS_MARKER})")
    manifest = artifacts.read_manifest(uri)
    if manifest.get("stage") != "ingest":
        raise InputError(f"{named_as}{uri} is a {manifest.get('stage')!r} artifact, not an ingest artifact")
    layout = manifest.get("layout")
    if layout is None or layout.get("partition_key") != PARTITION_KEY:
        raise InputError(
            f"{named_as}{uri} was written before ingest kept snapshot partitions (its manifest has no layout): "
            "ingest its inputs again"
        )

    def absolute(entry: dict) -> dict:
        if entry["artifact"] is not None:
            return dict(entry)
        return {**entry, "artifact": uri, "version": manifest["version"]}

    return {
        "uri": uri,
        "partition_key": PARTITION_KEY,
        "partitions": [absolute(p) for p in layout["partitions"]],
        "quarantine": [absolute(q) for q in layout["quarantine"]],
    }


def partitions(uri: str) -> list[Partition]:
    """Every snapshot partition an ingest artifact holds or references, sorted by snapshot."""
    layout = read_layout(uri)
    return [
        Partition(p["snapshot"], join(p["artifact"], p["path"]), p["artifact"], p["version"], p["documents"])
        for p in layout["partitions"]
    ]


def document_uris(uri: str) -> list[str]:
    """The folders holding an ingest artifact's documents, earlier snapshots included (what dedup reads)."""
    return [partition.uri for partition in partitions(uri)]


def documents_of(uri: str) -> list[str]:
    """What dedup reads of an input: an ingest artifact's document folders (never its quarantine); any other
    file or folder as it is."""
    if artifacts.is_committed(uri) and artifacts.read_manifest(uri).get("stage") == "ingest":
        return document_uris(uri)
    return [uri]
