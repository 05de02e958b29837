"""Cloud Storage by URI: list, stream-hash, copy and read small objects, never a whole large object in memory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cd4ml.errors import PermanentError

if TYPE_CHECKING:
    from google.cloud import storage

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class GcsPath:
    """``gs://bucket/name``."""

    bucket: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> GcsPath:
        if not uri.startswith("gs://") or "/" not in uri[5:]:
            raise PermanentError(f"not a gs://BUCKET/PATH URI: {uri!r}")
        bucket, _, name = uri[5:].partition("/")
        return cls(bucket, name)

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


class _HashingSink:
    """A write-only file object that hashes, counts bytes and counts lines of what passes through."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.bytes = 0
        self.lines = 0
        self._last = b"\n"

    def write(self, chunk: bytes) -> int:
        self.sha256.update(chunk)
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")
        if chunk:
            self._last = chunk[-1:]
        return len(chunk)

    @property
    def line_count(self) -> int:
        """Lines, counting a last line without a newline."""
        return self.lines + (0 if self._last == b"\n" else 1)


@dataclass(frozen=True)
class Digest:
    """What streaming an object through a hash tells."""

    sha256: str
    bytes: int
    lines: int


def digest(client: storage.Client, path: GcsPath, generation: int | None = None) -> Digest:
    """sha256, size and line count of an object (at ``generation``, when given), streamed in chunks."""
    sink = _HashingSink()
    blob = client.bucket(path.bucket).blob(path.name, chunk_size=CHUNK * 8, generation=generation)
    blob.download_to_file(sink)
    return Digest(sink.sha256.hexdigest(), sink.bytes, sink.line_count)


def list_objects(client: storage.Client, prefix: GcsPath) -> list[Any]:
    """Objects under a prefix, sorted by name, without folder placeholders."""
    blobs = client.list_blobs(prefix.bucket, prefix=prefix.name)
    return sorted((b for b in blobs if not b.name.endswith("/")), key=lambda b: b.name)


def read_text(client: storage.Client, path: GcsPath) -> str | None:
    """A small object's text, or None when it does not exist."""
    from google.api_core.exceptions import NotFound

    try:
        text: str = client.bucket(path.bucket).blob(path.name).download_as_text()
    except NotFound:
        return None
    return text


def exists(client: storage.Client, path: GcsPath) -> bool:
    return bool(client.bucket(path.bucket).blob(path.name).exists())
