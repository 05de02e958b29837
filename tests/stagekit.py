"""Drive a stage handler in-process against the in-memory ledger and bus: real Events, real Context, no process.

``kit = Kit("promote")`` gives a Context whose ledger is ``Ledger.in_memory()`` and whose bus records what it
publishes and dead-letters; ``kit.deliver(handler, event)`` runs the handler through ``runtime.dispatch`` as
functions-framework would (a raw Pub/Sub push body turned into the CloudEvent a ``@cloud_event`` handler gets).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudevents.http import CloudEvent

from cd4ml import catalog, runtime
from cd4ml.events import Event, PubSubMessage, format_time, now
from cd4ml.ledger import Ledger
from cd4ml.settings import Settings

PROJECT = "cd4ml-unit"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class DeadLetter:
    topic: str
    message: PubSubMessage
    stage: str
    error: str
    exhausted: bool


@dataclass
class MemoryBus:
    """What a stage published (events, in order) and dead-lettered; ``fail`` makes every publish raise."""

    published: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    fail: bool = False

    def publish(self, event: Event) -> str:
        if self.fail:
            raise RuntimeError("publish failed (test)")
        self.published.append(event)
        return str(len(self.published))

    def dead_letter(
        self, topic: str, message: PubSubMessage, *, stage: str, error: str, exhausted: bool = False
    ) -> str:
        self.dead_letters.append(DeadLetter(topic, message, stage, error, exhausted))
        return str(len(self.dead_letters))

    def types(self) -> list[str]:
        return [e.type for e in self.published]


def settings(stage: str, **overrides: str) -> Settings:
    env = {
        "CD4ML_PROJECT": PROJECT,
        "CD4ML_STAGE": stage,
        "CD4ML_DEAD_LETTER_TOPIC": catalog.dead_letter_topic(stage) if stage else "",
        "CD4ML_ARTIFACT_BUCKET": "artifacts",
        "CD4ML_DATA_BUCKET": "data",
        "CD4ML_REGISTRY": "registry.test/cd4ml",
        **{f"CD4ML_{k.upper()}": v for k, v in overrides.items()},
    }
    return Settings.from_env(env)


class MemoryBlob:
    """The part of google.cloud.storage.Blob the stages use, over a dict of (bytes, generation)."""

    def __init__(self, storage: MemoryStorage, bucket: str, name: str, generation: int | None = None) -> None:
        self._storage, self.bucket_name, self.name, self._wanted = storage, bucket, name, generation

    def _key(self) -> tuple[str, str]:
        return (self.bucket_name, self.name)

    @property
    def generation(self) -> int | None:
        found = self._storage.objects.get(self._key())
        return self._wanted or (found[1] if found else None)

    def download_as_bytes(self) -> bytes:
        from google.api_core.exceptions import NotFound

        found = self._storage.objects.get(self._key())
        if found is None or (self._wanted and found[1] != self._wanted):
            raise NotFound(f"gs://{self.bucket_name}/{self.name}")  # type: ignore[no-untyped-call]
        return found[0]

    def download_as_text(self) -> str:
        return self.download_as_bytes().decode()

    def download_to_file(self, sink: Any) -> None:
        sink.write(self.download_as_bytes())

    def exists(self) -> bool:
        return self._key() in self._storage.objects

    @property
    def md5_hash(self) -> str | None:
        """base64 of the content's MD5, as the object resource's ``md5Hash``."""
        found = self._storage.objects.get(self._key())
        return base64.b64encode(hashlib.md5(found[0]).digest()).decode() if found else None

    @property
    def crc32c(self) -> str | None:
        """base64 of the content's big-endian CRC32C, as the object resource's ``crc32c``."""
        import google_crc32c

        found = self._storage.objects.get(self._key())
        return base64.b64encode(google_crc32c.value(found[0]).to_bytes(4, "big")).decode() if found else None

    def upload_from_string(self, data: str | bytes, content_type: str = "") -> None:
        self._storage.put(self.bucket_name, self.name, data.encode() if isinstance(data, str) else data)


class MemoryBucket:
    def __init__(self, storage: MemoryStorage, name: str) -> None:
        self._storage, self.name = storage, name

    def blob(self, name: str, chunk_size: int | None = None, generation: int | None = None) -> MemoryBlob:
        return MemoryBlob(self._storage, self.name, name, generation)

    def get_blob(self, name: str) -> MemoryBlob | None:
        """The object ``name`` with its metadata, None when it does not exist (as Bucket.get_blob)."""
        blob = MemoryBlob(self._storage, self.name, name)
        return blob if blob.exists() else None

    def copy_blob(
        self, blob: MemoryBlob, destination: MemoryBucket, new_name: str, source_generation: int | None = None
    ) -> MemoryBlob:
        """Copy ``blob`` (at ``source_generation``: NotFound once replaced, as without object versioning)."""
        data = MemoryBlob(self._storage, self.name, blob.name, source_generation).download_as_bytes()
        self._storage.put(destination.name, new_name, data)
        return MemoryBlob(self._storage, destination.name, new_name)


class MemoryStorage:
    """Cloud Storage in a dict, with generations (the stages' reads and writes; unit tests)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self._generation = 1000

    def put(self, bucket: str, name: str, data: bytes) -> int:
        self._generation += 1
        self.objects[(bucket, name)] = (data, self._generation)
        return self._generation

    def bucket(self, name: str) -> MemoryBucket:
        return MemoryBucket(self, name)

    def list_blobs(self, bucket: str, prefix: str = "") -> list[MemoryBlob]:
        return [  # as listed: each at the generation it had then
            MemoryBlob(self, b, n, self.objects[(b, n)][1])
            for (b, n) in sorted(self.objects)
            if b == bucket and n.startswith(prefix)
        ]


class Kit:
    """A stage's Context on the in-memory ledger and bus, and helpers to seed runs and deliver events."""

    def __init__(
        self, stage: str, ledger: Ledger | None = None, storage: MemoryStorage | None = None, **overrides: str
    ) -> None:
        self.ctx = runtime.Context(settings(stage, **overrides))
        self.ledger = ledger or Ledger.in_memory()
        self.bus = MemoryBus()
        self.ctx.ledger = self.ledger  # cached_property: an instance attribute wins
        self.ctx.bus = self.bus  # type: ignore[assignment]
        self.storage = storage or MemoryStorage()
        self.ctx.storage = self.storage

    def seed(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Create the run record ``run_id`` (running, created now) with ``fields``; returns it."""
        stamp = format_time(now())
        doc = {
            "run_id": run_id,
            "model": run_id.rsplit("-", 1)[0],
            "status": "running",
            "trigger": "manual",
            "scheduled_time": stamp,
            "created_at": stamp,
            "updated_at": stamp,
            "manifest": {},
            "events": [],
            **fields,
        }
        assert self.ledger.store.create(f"runs/{run_id}", doc)
        return doc

    def run(self, run_id: str) -> dict[str, Any]:
        doc = self.ledger.get(run_id)
        assert doc is not None, f"no run {run_id}"
        return doc

    def deliver(
        self,
        handler: Callable[[PubSubMessage, runtime.Context], None],
        event: Event | None = None,
        *,
        message: PubSubMessage | None = None,
        attempt: int = 0,
    ) -> None:
        """Run ``handler`` on ``event`` (or a raw ``message``) through ``runtime.dispatch`` in this kit's context."""
        body = push_body(message or as_message(event), attempt)
        cloud_event = CloudEvent(
            {
                "id": body["message"]["messageId"],
                "source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/t",
                "type": "google.cloud.pubsub.topic.v1.messagePublished",
            },
            body,
        )
        original = runtime.context
        runtime.context = lambda: self.ctx  # type: ignore[assignment]
        try:
            runtime.dispatch(cloud_event, handler)
        finally:
            runtime.context = original


def as_message(event: Event | None, message_id: str = "") -> PubSubMessage:
    assert event is not None
    data, attributes = event.to_message()
    return PubSubMessage(message_id=message_id or f"m-{event.id}", publish_time=now(), attributes=attributes, data=data)


def push_body(message: PubSubMessage, attempt: int = 0) -> dict[str, Any]:
    """What functions-framework hands a ``@cloud_event`` handler from a push: message.{data, attributes,
    messageId, publishTime} (``deliveryAttempt`` only when ``attempt`` is set)."""
    body: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "messageId": message.message_id,
            "publishTime": format_time(message.publish_time),
        },
        "subscription": message.subscription,
    }
    if attempt:
        body["deliveryAttempt"] = attempt
    return body


def manifest(**changes: Any) -> dict[str, Any]:
    """The example model's manifest (examples/digits) as the bucket holds it, with top-level ``changes``."""
    import yaml

    with (REPO / "examples" / "digits" / "manifest.yaml").open() as file:
        doc: dict[str, Any] = yaml.safe_load(file)
    return {**doc, **changes}


def event(type_: str, run_id: str, data: Mapping[str, Any], source: str = "//test") -> Event:
    return Event.new(type_, run_id, data, source=source)
