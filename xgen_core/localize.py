"""Local directories for URIs: tokenizers, memory-mapped shards and TensorBoard want real files.

`local_directory(uri)` is the path itself for a local URI and a cached download for gs://;
`writable_directory(uri)` is the path itself, or a temporary directory uploaded to gs:// on success.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path

from xgen_core.storage import is_gcs, join, normalize_uri, store_for

CACHE_DIR = Path(tempfile.gettempdir()) / "xgen-cache"


def local_directory(uri: str) -> Path:
    if not is_gcs(uri):
        return Path(normalize_uri(uri))
    target = CACHE_DIR / hashlib.sha256(uri.encode()).hexdigest()[:16]
    done = target / ".complete"
    if not done.exists():
        download_directory(uri, target)
        done.write_text(uri)
    return target


def download_directory(uri: str, target: Path) -> None:
    store = store_for(uri)
    prefix = uri.rstrip("/") + "/"
    for info in store.list_files(uri):
        local = target / info.uri[len(prefix):]
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(store.read_bytes(info.uri))


def upload_directory(local: Path, uri: str, only: list[str] | None = None) -> None:
    """Copy files under `local` to `uri` (all of them, or the relative paths in `only`)."""
    store = store_for(uri)
    paths = [local / name for name in only] if only is not None else sorted(local.rglob("*"))
    for path in paths:
        if path.is_file():
            store.write_bytes(join(uri, str(path.relative_to(local))), path.read_bytes())


@contextlib.contextmanager
def writable_directory(uri: str):
    if not is_gcs(uri):
        path = Path(normalize_uri(uri))
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="xgen-out-") as temporary:
        yield Path(temporary)
        upload_directory(Path(temporary), uri)
