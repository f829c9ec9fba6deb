"""Versioned stage artifacts: `{root}/{stage}-{version}/` with manifest.json and a _SUCCESS marker.

A stage writes into `{root}/.staging/{stage}-{version}-{attempt}/` while holding a lease, then publishes:
the artifact appears whole or not at all, and a committed artifact is never written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from xgen_core import __version__
from xgen_core.errors import XgenError
from xgen_core.storage import FileInfo, Store, join, normalize_uri, store_for

SUCCESS_MARKER = "_SUCCESS"
MANIFEST = "manifest.json"
VERSION_CHARS = 12

open_store = store_for


def code_version_label(code_version: int) -> str:
    """Package version + the stage's own code version: part of every artifact version and manifest."""
    return f"{__version__}+{code_version}"


def stage_version(stage: str, code_version: int, config: dict, inputs: dict[str, str]) -> str:
    """Short hash of everything that decides a stage's output."""
    decided_by = {
        "stage": stage,
        "code": code_version_label(code_version),
        "config": config,
        "inputs": dict(sorted(inputs.items())),
    }
    blob = json.dumps(decided_by, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:VERSION_CHARS]


def artifact_uri(root: str, stage: str, version: str) -> str:
    return join(normalize_uri(root), f"{stage}-{version}")


def is_committed(uri: str) -> bool:
    return store_for(uri).exists(join(uri, SUCCESS_MARKER))


def read_manifest(uri: str) -> dict:
    return json.loads(store_for(uri).read_text(join(uri, MANIFEST)))


def manifest_digest(uri: str) -> str:
    return hashlib.sha256(store_for(uri).read_bytes(join(uri, MANIFEST))).hexdigest()[:16]


def listing_digest(files: list[FileInfo]) -> str:
    """Digest of external input files by name, size and generation: a changed file gives a new version."""
    lines = "\n".join(f"{f.uri}\t{f.size}\t{f.generation}" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


@dataclass
class Lease:
    """Exclusive right to write one artifact version, kept alive by a heartbeat thread.

    Taken with a write-once create; an expired lease is taken over with compare-and-swap on its generation,
    so of two writers racing for a stale lease exactly one wins.
    """

    uri: str
    ttl_s: float
    heartbeat_s: float
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    generation: str | None = None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def store(self) -> Store:
        return store_for(self.uri)

    def try_acquire(self) -> bool:
        if self.store.create(self.uri, self._body()):
            self.generation = self._current_generation_if_mine()
            return self.generation is not None
        current = self.store.read_with_generation(self.uri)
        if current is None:
            return self.try_acquire()
        body, generation = current
        if _lease_expires_at(body) > time.time():
            return False
        self.generation = self.store.replace_if(self.uri, self._body(), generation)
        return self.generation is not None

    def holder(self) -> str:
        current = self.store.read_with_generation(self.uri)
        return json.loads(current[0]).get("owner", "?") if current else "nobody"

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-heartbeat {self.uri}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self.generation is not None:
            current = self.store.read_with_generation(self.uri)
            if current is not None and current[1] == self.generation:
                self.store.delete(self.uri)

    def still_held(self) -> bool:
        """Renew once and report: a writer checks this right before it publishes (fencing)."""
        self._renew()
        return not self.lost

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._renew()

    def _renew(self) -> None:
        if self.lost or self.generation is None:
            return
        generation = self.store.replace_if(self.uri, self._body(), self.generation)
        if generation is None:
            self.lost = True
        else:
            self.generation = generation

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s}).encode()

    def _current_generation_if_mine(self) -> str | None:
        current = self.store.read_with_generation(self.uri)
        if current and json.loads(current[0]).get("owner") == self.owner:
            return current[1]
        return None


def _lease_expires_at(body: bytes) -> float:
    try:
        return float(json.loads(body)["expires_at"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # an unreadable lease is treated as expired


def lease_uri(final: str) -> str:
    return final.rstrip("/") + ".lease.json"


def staging_uri(final: str) -> str:
    """A fresh sibling of the final path: same filesystem or bucket, so publishing is a rename or a copy."""
    return f"{final.rstrip('/')}.staging-{uuid.uuid4().hex[:12]}"


def remove_stale_staging(final: str) -> None:
    store_for(final).delete_matching(final.rstrip("/") + ".staging-")


def commit(staging: str, final: str, manifest: dict) -> bool:
    """Write the manifest, then publish staging as final with the success marker last. False: another won."""
    store = store_for(final)
    store.write_text(join(staging, MANIFEST), _manifest_json(manifest))
    return store.publish(staging, final, SUCCESS_MARKER, _success_marker(manifest))


def commit_in_place(final: str, manifest: dict) -> None:
    """For a resumable stage that worked in its final directory: the manifest, then the success marker."""
    store = store_for(final)
    store.write_text(join(final, MANIFEST), _manifest_json(manifest))
    store.write_bytes(join(final, SUCCESS_MARKER), _success_marker(manifest))


def _manifest_json(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=True)


def _success_marker(manifest: dict) -> bytes:
    return json.dumps({"version": manifest["version"], "committed_at": time.time()}).encode()


def require_committed(uri: str, what: str) -> None:
    if not is_committed(uri):
        raise XgenError(f"{what} at {uri} is not a committed artifact (no {SUCCESS_MARKER})")
