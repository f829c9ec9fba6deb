"""An in-memory stand-in for google.cloud.storage that enforces generation preconditions.

The GCS emulator ignores `if_generation_match`, so write-once and compare-and-swap are proven against this
fake, which implements exactly the calls GCSStore makes, with GCS's precondition semantics.
"""

from __future__ import annotations

import io
import itertools
import threading

from google.api_core.exceptions import NotFound, PreconditionFailed


class FakeClient:
    def __init__(self):
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.lock = threading.Lock()
        self.generations = itertools.count(1)

    def bucket(self, name: str) -> "FakeBucket":
        return FakeBucket(self, name)

    def list_blobs(self, bucket: "FakeBucket", prefix: str = ""):
        with self.lock:
            names = sorted(n for (b, n) in self.objects if b == bucket.name and n.startswith(prefix))
        return [bucket.get_blob(n) for n in names if bucket.get_blob(n) is not None]


class FakeBucket:
    def __init__(self, client: FakeClient, name: str):
        self.client, self.name = client, name

    def blob(self, name: str) -> "FakeBlob":
        return FakeBlob(self, name)

    def get_blob(self, name: str) -> "FakeBlob | None":
        blob = FakeBlob(self, name)
        return blob if blob.exists() else None

    def copy_blob(self, blob: "FakeBlob", bucket: "FakeBucket", new_name: str) -> None:
        bucket.blob(new_name).upload_from_string(blob.download_as_bytes())


class FakeBlob:
    def __init__(self, bucket: FakeBucket, name: str):
        self.bucket, self.name = bucket, name
        self.generation = None
        self.size = None
        self.reload(missing_ok=True)

    @property
    def _key(self):
        return (self.bucket.name, self.name)

    def reload(self, missing_ok: bool = False) -> None:
        with self.bucket.client.lock:
            found = self.bucket.client.objects.get(self._key)
        if found is None and not missing_ok:
            raise NotFound(self.name)
        if found is not None:
            self.size, self.generation = len(found[0]), found[1]

    def exists(self) -> bool:
        return self._key in self.bucket.client.objects

    def download_as_bytes(self, if_generation_match: int | None = None, start: int | None = None,
                          end: int | None = None) -> bytes:
        with self.bucket.client.lock:
            found = self.bucket.client.objects.get(self._key)
            if found is None:
                raise NotFound(self.name)
            if if_generation_match is not None and found[1] != int(if_generation_match):
                raise PreconditionFailed(self.name)
            return found[0][start or 0:None if end is None else end + 1]  # GCS's `end` is inclusive

    def upload_from_string(self, data: bytes, if_generation_match: int | None = None) -> None:
        client = self.bucket.client
        with client.lock:
            current = client.objects.get(self._key)
            current_generation = current[1] if current else 0
            if if_generation_match is not None and current_generation != int(if_generation_match):
                raise PreconditionFailed(self.name)
            self.generation = next(client.generations)
            client.objects[self._key] = (bytes(data), self.generation)
            self.size = len(data)

    def delete(self) -> None:
        with self.bucket.client.lock:
            if self.bucket.client.objects.pop(self._key, None) is None:
                raise NotFound(self.name)

    def open(self, mode: str = "rb"):
        assert mode == "rb"
        return io.BytesIO(self.download_as_bytes())
