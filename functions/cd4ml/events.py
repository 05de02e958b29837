"""CloudEvents 1.0 in binary content mode over Pub/Sub: frozen values, validated both ways.

Attributes ``ce-specversion``, ``ce-id``, ``ce-source``, ``ce-type``, ``ce-time``, ``ce-subject`` (the run
id) and ``content-type: application/json``; the message data is the event's JSON data, validated against
``schemas/<type>.json`` when published and when received.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from cd4ml import catalog
from cd4ml.errors import InvalidEvent
from cd4ml.limits import bounded

RUN_REQUESTED = "cd4ml.run.requested.v1"
WATCH_TICKED = "cd4ml.watch.ticked.v1"
DATA_FETCHED = "cd4ml.data.fetched.v1"
TRAINING_SUBMITTED = "cd4ml.training.submitted.v1"
TRAINING_COMPLETED = "cd4ml.training.completed.v1"
TRAINING_FAILED = "cd4ml.training.failed.v1"
EVALUATION_PASSED = "cd4ml.evaluation.passed.v1"
EVALUATION_FAILED = "cd4ml.evaluation.failed.v1"
IMAGE_BUILT = "cd4ml.image.built.v1"
IMAGE_FAILED = "cd4ml.image.failed.v1"
IMAGE_PUSHED = "cd4ml.image.pushed.v1"
CANARY_TRIGGERED = "cd4ml.canary.triggered.v1"
CANARY_FAILED = "cd4ml.canary.failed.v1"
CANARY_SUCCEEDED = "cd4ml.canary.succeeded.v1"
MODEL_PROMOTED = "cd4ml.model.promoted.v1"
RUN_SKIPPED = "cd4ml.run.skipped.v1"
APPROVAL_REQUESTED = "cd4ml.approval.requested.v1"
DELIVERY_CLEARED = "cd4ml.delivery.cleared.v1"
RUN_REJECTED = "cd4ml.run.rejected.v1"
RUN_FAILED = "cd4ml.run.failed.v1"

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
_NAMESPACE = uuid.UUID("6f1c0c9e-2f4e-4d59-9a57-0c1d4d6b2f10")
#: Bytes of one problem's text: several fit in a dead letter's 1024-byte reason.
PROBLEM_BYTES = 300


def now() -> datetime:
    """The current time, UTC, to the millisecond (what ce-time carries)."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def format_time(t: datetime) -> str:
    """RFC 3339 with milliseconds and a Z."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


#: The instants accepted on input: what a run id can name (4-digit years), less a year at the top, so arithmetic on
#: an accepted time (a window, a deadline, a quiet period) never leaves what ``datetime`` holds.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (with Z or an offset) in [EARLIEST, LATEST); ValueError naming why otherwise.

    ``9999-12-31T23:59:59-01:00`` is year 10000 in UTC: ``astimezone`` raised OverflowError, which no caller
    expected, so the message was retried until Pub/Sub dead-lettered it without a reason.
    """
    t = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    try:
        utc = t.astimezone(UTC)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(
            f"{text!r} is outside the instants accepted ({format_time(EARLIEST)} to {format_time(LATEST)})"
        )
    return utc


def event_id(run_id: str, type_: str, key: str = "") -> str:
    """The id of the event of ``type_`` in a run: deterministic, so a re-publish is a duplicate, not news."""
    return str(uuid.uuid5(_NAMESPACE, f"{run_id}/{type_}/{key}"))


_FORMATS = FormatChecker(formats=())


def _is_date_time(value: object) -> bool:
    """RFC 3339 with a time zone, in the range ``parse_time`` accepts (ValueError saying why not)."""
    return not isinstance(value, str) or bool(parse_time(value))


_FORMATS.checks("date-time", raises=ValueError)(_is_date_time)


@functools.cache
def _validator(type_: str) -> Draft202012Validator:
    # jsonschema checks "format" only with a checker: without one, "date-time" is an annotation and anything passes.
    return Draft202012Validator(catalog.schema(type_), format_checker=_FORMATS)


def data_problems(type_: str, data: Any) -> list[str]:
    """Every way ``data`` breaks the schema of ``type_``, each naming the field; empty when valid."""
    problems = []
    for error in sorted(_validator(type_).iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in error.absolute_path) or "(data)"
        message = error.message
        if error.validator == "format" and error.cause is not None:
            message += f" ({error.cause})"  # why: e.g. the instant is outside the years accepted
        # The value may be huge: it is cut, jsonschema's own words ("is too long", "does not match") are kept.
        problems.append(bounded(f"{bounded(where, 200)}: {message}", PROBLEM_BYTES))
    return problems


@dataclass(frozen=True)
class PubSubMessage:
    """A Pub/Sub message as pushed to a function: what the edge of every stage receives."""

    message_id: str
    publish_time: datetime
    attributes: Mapping[str, str]
    data: bytes
    subscription: str = ""
    #: Pub/Sub's count of deliveries of this message on this subscription (set when a dead-letter policy is);
    #: 0 when the push body has none (the emulator's).
    delivery_attempt: int = 0

    @classmethod
    def from_push(cls, envelope: Any) -> PubSubMessage:
        """From the ``messagePublished`` data (or a raw push body): ``{"message": {...}, "subscription": ...}``."""
        message = envelope.get("message") if isinstance(envelope, Mapping) else None
        if not isinstance(message, Mapping):
            raise InvalidEvent("not a Pub/Sub push body", ["no 'message' object"])
        problems = []
        try:
            data = base64.b64decode(message.get("data") or "", validate=True)
        except (binascii.Error, TypeError):
            problems.append("message.data is not base64")
            data = b""
        attributes = message.get("attributes") or {}
        if not isinstance(attributes, Mapping):
            problems.append("message.attributes is not an object")
            attributes = {}
        try:
            published = parse_time(str(message.get("publishTime") or message.get("publish_time")))
        except ValueError:
            published = now()
        if problems:
            raise InvalidEvent("malformed Pub/Sub message", problems)
        return cls(
            message_id=str(message.get("messageId") or message.get("message_id") or ""),
            publish_time=published,
            attributes=MappingProxyType({str(k): str(v) for k, v in attributes.items()}),
            data=data,
            subscription=str(envelope.get("subscription", "")),
            delivery_attempt=_attempt(envelope.get("deliveryAttempt")),
        )

    def to_push(self) -> dict[str, Any]:
        """The push body Pub/Sub would deliver for this message (for tests and the dead-letter copy)."""
        return {
            "message": {
                "attributes": dict(self.attributes),
                "data": base64.b64encode(self.data).decode(),
                "messageId": self.message_id,
                "publishTime": format_time(self.publish_time),
            },
            "subscription": self.subscription,
        }


@dataclass(frozen=True)
class Event:
    """A cd4ml CloudEvent. Build with :meth:`new` (validates) or :meth:`from_message` (validates)."""

    type: str
    subject: str
    data: Mapping[str, Any] = field(hash=False)
    id: str
    source: str
    time: datetime

    @classmethod
    def new(
        cls,
        type_: str,
        subject: str,
        data: Mapping[str, Any],
        *,
        source: str,
        id: str | None = None,
        time: datetime | None = None,
    ) -> Event:
        """A new event; raises InvalidEvent, naming every problem, when ``data`` breaks its schema."""
        problems = _type_problems(type_, None)
        if not problems:
            problems = data_problems(type_, plain(data))
        if problems:
            raise InvalidEvent(f"refusing to publish an invalid {type_} event", problems, run_id=subject or None)
        return cls(
            type=type_,
            subject=subject,
            data=_frozen(data),
            id=id or event_id(subject, type_),
            source=source,
            time=time or now(),
        )

    @classmethod
    def from_message(cls, message: PubSubMessage, expected: Collection[str]) -> Event:
        """Unwrap and validate the event in a Pub/Sub message; InvalidEvent names every problem at once.

        Cloud Scheduler can only send static attributes, so a missing ``ce-id`` defaults to the message
        id and a missing ``ce-time`` to the publish time.
        """
        attrs = message.attributes
        problems: list[str] = []
        if attrs.get("ce-specversion") != SPECVERSION:
            problems.append(f"ce-specversion must be {SPECVERSION!r}, got {attrs.get('ce-specversion')!r}")
        type_ = attrs.get("ce-type", "")
        problems += _type_problems(type_, expected)
        if not attrs.get("ce-source"):
            problems.append("ce-source is missing")
        time = message.publish_time
        if "ce-time" in attrs:
            try:
                time = parse_time(attrs["ce-time"])
            except ValueError:
                problems.append(f"ce-time is not an RFC 3339 timestamp: {attrs['ce-time']!r}")
        content_type = attrs.get("content-type", CONTENT_TYPE)
        if content_type.split(";")[0].strip() != CONTENT_TYPE:
            problems.append(f"content-type must be {CONTENT_TYPE}, got {content_type!r}")
        data: Any = None
        try:
            data = json.loads(message.data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"data is not JSON: {exc}")
        else:
            if not isinstance(data, dict):
                problems.append(f"data must be a JSON object, got {type(data).__name__}")
            elif type_ in catalog.load().event_types:
                problems += data_problems(type_, data)
        subject = attrs.get("ce-subject", "")
        if problems:
            raise InvalidEvent(
                f"invalid event {type_ or '(no type)'} in message {message.message_id}",
                problems,
                run_id=subject or None,
            )
        return cls(
            type=type_,
            subject=subject,
            data=_frozen(data),
            id=attrs.get("ce-id") or message.message_id,
            source=attrs["ce-source"],
            time=time,
        )

    def to_message(self) -> tuple[bytes, dict[str, str]]:
        """The Pub/Sub message (data, attributes) in binary content mode."""
        attributes = {
            "ce-specversion": SPECVERSION,
            "ce-id": self.id,
            "ce-source": self.source,
            "ce-type": self.type,
            "ce-time": format_time(self.time),
            "content-type": CONTENT_TYPE,
        }
        if self.subject:
            attributes["ce-subject"] = self.subject
        return json.dumps(plain(self.data), separators=(",", ":")).encode(), attributes

    def summary(self) -> dict[str, str]:
        """What the run ledger keeps of an event."""
        return {"type": self.type, "id": self.id, "time": format_time(self.time), "source": self.source}


def _attempt(value: Any) -> int:
    """The push body's ``deliveryAttempt`` (https://cloud.google.com/pubsub/docs/push#receive_push), 0 if absent."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _type_problems(type_: str, expected: Collection[str] | None) -> list[str]:
    if not type_:
        return ["ce-type is missing"]
    if type_ not in catalog.load().event_types:
        return [f"ce-type {type_!r} is not a cd4ml event type"]
    if expected is not None and type_ not in expected:
        return [f"ce-type {type_!r} is not handled here (expects {', '.join(sorted(expected))})"]
    return []


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """Undo :func:`_frozen`: JSON-ready dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value
