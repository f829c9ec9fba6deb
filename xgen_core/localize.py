"""Local directories for writers that want real files (the tokenizer's save, TensorBoard, plots).

`writable_directory(uri)` is the path itself, or a temporary directory uploaded to gs:// on success;
`upload_directory` copies a local directory's files to a URI. Readers never download whole artifacts: shards
are read row by row straight from the store (`xgen_core.tokens.loader`).
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from xgen_core.storage import is_gcs, join, normalize_uri, store_for

CACHE_DIR = Path(tempfile.gettempdir()) / "xgen-cache"


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
