"""One small interface over local paths, file:// and gs:// URIs.

Besides plain reads and writes it offers the two primitives the artifact store builds its guarantees on:
`create` (write-once: fails when the object exists) and `replace_if` (compare-and-swap on a generation).
On GCS these are generation preconditions; locally, hard links and a file lock.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import tempfile
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Iterator

LOCK_DIR = Path(tempfile.gettempdir()) / "xgen-locks"


@dataclass(frozen=True)
class FileInfo:
    uri: str
    size: int
    generation: str


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def normalize_uri(uri: str) -> str:
    """Absolute local path for local URIs (file:// stripped), gs:// URIs unchanged."""
    if is_gcs(uri):
        return uri.rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return str(Path(uri).expanduser().resolve())


def store_for(uri: str) -> "Store":
    return GCSStore.from_env() if is_gcs(uri) else LOCAL


_injected_gcs_client = None


def use_gcs_client(client) -> None:
    """Route every gs:// access through this client (custom credentials, or an in-memory double); None resets."""
    global _injected_gcs_client
    _injected_gcs_client = client


class Store:
    def exists(self, uri: str) -> bool: ...
    def read_bytes(self, uri: str) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def create(self, uri: str, data: bytes) -> bool: ...
    def read_with_generation(self, uri: str) -> tuple[bytes, str] | None: ...
    def replace_if(self, uri: str, data: bytes, generation: str) -> str | None: ...
    def list_files(self, prefix: str) -> list[FileInfo]: ...
    def delete(self, uri: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def delete_matching(self, name_prefix: str) -> None: ...
    def publish(self, staging: str, final: str, marker: str, marker_data: bytes) -> bool: ...
    def open_read(self, uri: str) -> IO[bytes]: ...
    def copy(self, source: str, target: str) -> None:
        """target gets source's bytes; a reference where the store has one (a hard link, a server-side copy)."""
        ...

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        """Up to `length` bytes from byte `start` (fewer at the end of the object)."""
        ...

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))


class LocalStore(Store):
    def exists(self, uri: str) -> bool:
        return os.path.exists(normalize_uri(uri))

    def read_bytes(self, uri: str) -> bytes:
        return Path(normalize_uri(uri)).read_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = Path(normalize_uri(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def create(self, uri: str, data: bytes) -> bool:
        path = Path(normalize_uri(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # atomic, fails if the name exists, and readers never see a half-written file
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def read_with_generation(self, uri: str) -> tuple[bytes, str] | None:
        path = normalize_uri(uri)
        with self._locked(path):
            return self._read_generation_unlocked(path)

    def replace_if(self, uri: str, data: bytes, generation: str) -> str | None:
        path = normalize_uri(uri)
        with self._locked(path):
            current = self._read_generation_unlocked(path)
            if current is None or current[1] != generation:
                return None
            self.write_bytes(path, data)
            return _local_generation(path)

    def list_files(self, prefix: str) -> list[FileInfo]:
        root = Path(normalize_uri(prefix))
        if root.is_file():
            return [FileInfo(str(root), root.stat().st_size, _local_generation(str(root)))]
        if not root.is_dir():
            return []
        found = [p for p in root.rglob("*") if p.is_file()]
        return [FileInfo(str(p), p.stat().st_size, _local_generation(str(p))) for p in sorted(found)]

    def delete(self, uri: str) -> None:
        Path(normalize_uri(uri)).unlink(missing_ok=True)

    def copy(self, source: str, target: str) -> None:
        # A hard link is safe here: files are replaced (write_bytes) or deleted, never rewritten in place.
        path = Path(normalize_uri(target))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        try:
            os.link(normalize_uri(source), path)
        except OSError:  # another file system, or one without hard links
            shutil.copyfile(normalize_uri(source), path)

    def delete_prefix(self, prefix: str) -> None:
        path = Path(normalize_uri(prefix))
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def delete_matching(self, name_prefix: str) -> None:
        base = Path(normalize_uri(name_prefix))
        for path in base.parent.glob(glob.escape(base.name) + "*"):
            self.delete_prefix(str(path))

    def publish(self, staging: str, final: str, marker: str, marker_data: bytes) -> bool:
        staging_path, final_path = Path(normalize_uri(staging)), Path(normalize_uri(final))
        (staging_path / marker).write_bytes(marker_data)
        final_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(staging_path, final_path)  # one atomic step: the artifact appears whole, marker included
            return True
        except OSError:
            if (final_path / marker).exists():
                shutil.rmtree(staging_path, ignore_errors=True)
                return False
            raise

    def open_read(self, uri: str) -> IO[bytes]:
        return open(normalize_uri(uri), "rb")

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        with open(normalize_uri(uri), "rb") as file:
            return os.pread(file.fileno(), length, start)

    @staticmethod
    def _read_generation_unlocked(path: str) -> tuple[bytes, str] | None:
        try:
            return Path(path).read_bytes(), _local_generation(path)
        except FileNotFoundError:
            return None

    @staticmethod
    def _locked(path: str):
        # Lock files live outside the data tree so that nothing is left beside artifacts.
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        return _FileLock(str(LOCK_DIR / (hashlib.sha1(path.encode()).hexdigest() + ".lock")))


def _local_generation(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


class _FileLock:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


LOCAL = LocalStore()


class GCSStore(Store):
    """gs://bucket/path objects; write-once and compare-and-swap through generation preconditions."""

    def __init__(self, client):
        self.client = client

    @classmethod
    def from_env(cls) -> "GCSStore":
        if _injected_gcs_client is not None:
            return cls(_injected_gcs_client)
        return cls(_default_client(os.environ.get("STORAGE_EMULATOR_HOST", "")))

    def exists(self, uri: str) -> bool:
        bucket, name = self._split(uri)
        return bucket.blob(name).exists()

    def read_bytes(self, uri: str) -> bytes:
        bucket, name = self._split(uri)
        return bucket.blob(name).download_as_bytes()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, name = self._split(uri)
        bucket.blob(name).upload_from_string(data)

    def create(self, uri: str, data: bytes) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        bucket, name = self._split(uri)
        try:
            bucket.blob(name).upload_from_string(data, if_generation_match=0)
            return True
        except PreconditionFailed:
            return False

    def read_with_generation(self, uri: str) -> tuple[bytes, str] | None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        bucket, name = self._split(uri)
        blob = bucket.get_blob(name)
        if blob is None:
            return None
        generation = blob.generation  # read before downloading: some servers' download headers omit it
        try:
            return blob.download_as_bytes(if_generation_match=generation), str(generation)
        except (NotFound, PreconditionFailed):
            return self.read_with_generation(uri)  # changed between metadata and body reads: read again

    def replace_if(self, uri: str, data: bytes, generation: str) -> str | None:
        from google.api_core.exceptions import PreconditionFailed

        bucket, name = self._split(uri)
        blob = bucket.blob(name)
        try:
            blob.upload_from_string(data, if_generation_match=int(generation))
        except PreconditionFailed:
            return None
        if blob.generation is None:
            blob.reload()
        return str(blob.generation)

    def list_files(self, prefix: str) -> list[FileInfo]:
        bucket, name = self._split(prefix)
        exact = bucket.get_blob(name) if name else None
        if exact is not None:
            return [FileInfo(prefix, exact.size or 0, str(exact.generation))]
        blobs = self.client.list_blobs(bucket, prefix=name.rstrip("/") + "/" if name else "")
        return sorted(
            (FileInfo(f"gs://{bucket.name}/{b.name}", b.size or 0, str(b.generation)) for b in blobs),
            key=lambda f: f.uri,
        )

    def delete(self, uri: str) -> None:
        from google.api_core.exceptions import NotFound

        bucket, name = self._split(uri)
        try:
            bucket.blob(name).delete()
        except NotFound:
            pass

    def delete_prefix(self, prefix: str) -> None:
        for info in self.list_files(prefix):
            self.delete(info.uri)

    def delete_matching(self, name_prefix: str) -> None:
        bucket, name = self._split(name_prefix)
        for blob in self.client.list_blobs(bucket, prefix=name):
            self.delete(f"gs://{bucket.name}/{blob.name}")

    def publish(self, staging: str, final: str, marker: str, marker_data: bytes) -> bool:
        # GCS has no rename: copy the data, then create the marker write-once. Readers trust the marker alone.
        if self.exists(join(final, marker)):
            self.delete_prefix(staging)
            return False
        self.delete_prefix(final)  # leftovers of a writer that died mid-copy (never marked, so never read)
        for info in self.list_files(staging):
            self.copy(info.uri, join(final, info.uri[len(staging.rstrip("/")) + 1 :]))
        committed = self.create(join(final, marker), marker_data)
        self.delete_prefix(staging)
        return committed

    def open_read(self, uri: str) -> IO[bytes]:
        bucket, name = self._split(uri)
        return bucket.blob(name).open("rb")

    def copy(self, source: str, target: str) -> None:
        source_bucket, source_name = self._split(source)
        target_bucket, target_name = self._split(target)
        source_bucket.copy_blob(source_bucket.blob(source_name), target_bucket, target_name)

    def read_range(self, uri: str, start: int, length: int) -> bytes:
        bucket, name = self._split(uri)
        return bucket.blob(name).download_as_bytes(start=start, end=start + length - 1)  # `end` is inclusive

    def _split(self, uri: str):
        rest = uri[len("gs://") :]
        bucket_name, _, name = rest.partition("/")
        return self.client.bucket(bucket_name), name


def point_gcs_libraries_at_emulator() -> None:
    """Where STORAGE_EMULATOR_HOST names a GCS emulator, send the other GCS clients there too, as
    google-cloud-storage does by itself: TensorStore (Orbax's array writes) and gcsfs (epath's gs:// directories).
    Settings already in the environment win; without an emulator this changes nothing."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
    if not emulator:
        return
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
    # An emulator takes any bearer token; without one TensorStore looks for Google credentials and fails.
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
    # gcsfs asks the storage-control API whether a bucket is hierarchical, which emulators do not serve.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@lru_cache(maxsize=4)
def _default_client(emulator_host: str):
    from google.cloud import storage

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="xgen-local", credentials=AnonymousCredentials())
    return storage.Client()


def iter_files(uris: list[str]) -> Iterator[FileInfo]:
    """Every file under each URI (a file URI yields itself), in a stable order."""
    for uri in uris:
        yield from store_for(uri).list_files(normalize_uri(uri))
