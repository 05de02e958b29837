"""Content-addressed dataset snapshots: ``gs://BUCKET/datasets/MODEL/SHA256/``.

The snapshot's sha256 is that of its ``SHA256SUMS`` file (one ``<sha256>  <name>`` line per object,
sorted by name), so the same data always lands at the same address, whatever the run.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cd4ml.errors import PermanentError
from cd4ml.gcs import GcsPath, digest, exists, list_objects

if TYPE_CHECKING:
    from google.cloud import storage

SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class Dataset:
    """A snapshot, as data.fetched carries it."""

    uri: str
    sha256: str
    rows: int
    bytes: int
    files: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def take(client: storage.Client, source: str, bucket: str, model: str) -> Dataset:
    """Hash every object under ``source`` (streamed), then copy them server-side to their address.

    Rows are the lines of every object, less one header line per ``.csv`` file.
    """
    prefix = GcsPath.parse(source if source.endswith("/") else source + "/")
    objects = list_objects(client, prefix)
    if not objects:
        raise PermanentError(f"no data for model {model!r}", [f"no objects under {prefix.uri}"])
    lines: list[str] = []
    rows = size = 0
    for blob in objects:
        d = digest(client, GcsPath(prefix.bucket, blob.name), blob.generation)
        relative = blob.name[len(prefix.name) :]
        lines.append(f"{d.sha256}  {relative}\n")
        size += d.bytes
        rows += d.lines - (1 if relative.endswith(".csv") and d.lines else 0)
    sums = "".join(lines)
    sha = hashlib.sha256(sums.encode()).hexdigest()
    target = GcsPath(bucket, f"datasets/{model}/{sha}/")
    if not exists(client, GcsPath(bucket, target.name + SUMS)):
        source_bucket = client.bucket(prefix.bucket)
        target_bucket = client.bucket(bucket)
        for blob in objects:
            # The generation that was hashed, not whatever is live now: an upload between the hash and the copy must
            # not slip into a snapshot addressed by the old content's sha256.
            source_bucket.copy_blob(
                blob, target_bucket, target.name + blob.name[len(prefix.name) :], source_generation=blob.generation
            )
        # Written last: its presence marks a complete snapshot.
        target_bucket.blob(target.name + SUMS).upload_from_string(sums, content_type="text/plain")
    return Dataset(uri=target.uri, sha256=sha, rows=rows, bytes=size, files=len(objects))
