"""note_arrival and start_on_data: a run when new data lands under a model's source prefix, once uploads are quiet.

note_arrival: parse Cloud Storage's notification (``ObjectNotice.of``) → which models watch that object
(``watchers``: manifest ``trigger.on_new_data``, source prefix) → record the latest upload per model
(``arrival_update``, one optimistic read-modify-write of ``arrivals/{model}``).
start_on_data: on a tick, each model whose last upload has been quiet for ``quiet_seconds`` (``due``) →
run.requested for the slot of that upload's time, to the second. The run id is derived from that time, so a
duplicated notification (same upload) or a duplicated tick maps to the same run, and a burst of uploads to one.

The notification's format (https://cloud.google.com/storage/docs/pubsub-notifications): attributes
``notificationConfig``, ``eventType`` (OBJECT_FINALIZE, ...), ``payloadFormat`` (JSON_API_V1 | NONE),
``bucketId``, ``objectId``, ``objectGeneration``, ``eventTime`` (RFC 3339); with JSON_API_V1 the data is the
object resource (https://cloud.google.com/storage/docs/json_api/v1/objects#resource) as JSON.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cd4ml import events
from cd4ml.errors import InvalidManifest, PermanentError
from cd4ml.events import Event, PubSubMessage, format_time, now, parse_time
from cd4ml.gcs import GcsPath, list_objects, read_text
from cd4ml.manifest import Manifest, loads, resolve_gcs
from cd4ml.run import RunId
from cd4ml.runtime import Context

FINALIZE = "OBJECT_FINALIZE"
#: fetch_data's own snapshots (datasets/MODEL/SHA256/) land in the data bucket too: never new source data.
SNAPSHOTS = "datasets/"


@dataclass(frozen=True)
class ObjectNotice:
    """One Cloud Storage notification: which object, which generation, what happened and when."""

    bucket: str
    name: str
    generation: str
    event_type: str
    event_time: datetime

    @classmethod
    def of(cls, message: PubSubMessage) -> ObjectNotice:
        """PermanentError naming every missing or malformed attribute (the data is only read for its time)."""
        a = message.attributes
        problems = [
            f"attribute {k} is missing"
            for k in ("bucketId", "objectId", "eventType", "payloadFormat", "objectGeneration")
            if not a.get(k)
        ]
        when = a.get("eventTime", "")
        if not when and a.get("payloadFormat") == "JSON_API_V1":
            try:
                when = str(json.loads(message.data or b"{}").get("updated", ""))
            except (json.JSONDecodeError, AttributeError):
                problems.append("data is not the object resource as JSON (payloadFormat JSON_API_V1)")
        try:
            at = parse_time(when)
        except ValueError:
            problems.append(f"eventTime {when[:40]!r} is not an RFC 3339 time")
            at = now()
        if problems:
            raise PermanentError("not a Cloud Storage notification", problems)
        return cls(a["bucketId"], a["objectId"], a["objectGeneration"], a["eventType"], at)


def watchers(notice: ObjectNotice, manifests: Iterable[Manifest], data_bucket: str) -> list[tuple[str, int]]:
    """(model, quiet_seconds) of every model that asks for ``trigger.on_new_data`` and whose source prefix holds
    the newly finalized object."""
    if notice.event_type != FINALIZE or (notice.bucket == data_bucket and notice.name.startswith(SNAPSHOTS)):
        return []
    found = []
    for manifest in manifests:
        on_new_data = (manifest.raw.get("trigger") or {}).get("on_new_data")
        if not on_new_data:
            continue
        # The folder fetch_data snapshots (snapshot.take): a prefix without its slash names that folder too.
        folder = resolve_gcs(manifest.data_source, data_bucket)
        source = GcsPath.parse(folder if folder.endswith("/") else folder + "/")
        if source.bucket == notice.bucket and notice.name.startswith(source.name):
            found.append((manifest.name, int(on_new_data["quiet_seconds"])))
    return found


def arrival_update(
    current: Mapping[str, Any] | None, model: str, quiet_seconds: int, notice: ObjectNotice
) -> dict[str, Any] | None:
    """The new ``arrivals/{model}`` document when ``notice`` is a later upload; None for a duplicate or an older one
    (Pub/Sub delivers at least once and in no particular order)."""
    stamp = format_time(notice.event_time)
    if current and str(current.get("last_upload", "")) >= stamp:
        return None
    return {
        "model": model,
        "last_upload": stamp,
        "object": f"gs://{notice.bucket}/{notice.name}",
        "generation": notice.generation,
        "quiet_seconds": quiet_seconds,
        "pending": True,
        "requested_for": str((current or {}).get("requested_for", "")),
    }


def due(arrival: Mapping[str, Any], at: datetime) -> tuple[str, dict[str, Any]] | None:
    """(run id, run.requested data) once the last upload has been quiet for ``quiet_seconds``; None before, or when
    that upload already has its run."""
    last = str(arrival.get("last_upload", ""))
    if not arrival.get("pending") or not last or arrival.get("requested_for") == last:
        return None
    uploaded = parse_time(last)
    if at < uploaded + timedelta(seconds=int(arrival.get("quiet_seconds", 0))):
        return None
    slot = uploaded.replace(microsecond=0)
    model = str(arrival["model"])
    return str(RunId.of(model, slot)), {"model": model, "scheduled_time": format_time(slot), "trigger": "new_data"}


# --- the handlers ------------------------------------------------------------------------------------------------


def manifests(ctx: Context) -> list[Manifest]:
    """Every valid manifest in the artifact bucket (an invalid one is logged and watched by nobody)."""
    prefix = GcsPath(ctx.settings.artifact_bucket, "manifests/")
    found = []
    for blob in list_objects(ctx.storage, prefix):
        text = read_text(ctx.storage, GcsPath(prefix.bucket, blob.name))
        try:
            found.append(loads(text or "", origin=f"gs://{prefix.bucket}/{blob.name}"))
        except InvalidManifest as bad:
            ctx.log.warning(f"{bad.message}; it starts no run on new data", extra={"stage": ctx.settings.stage})
    return found


def _update(
    current: Mapping[str, Any] | None, *, model: str, quiet: int, notice: ObjectNotice
) -> dict[str, Any] | None:
    return arrival_update(current, model, quiet, notice)


def note_arrival(message: PubSubMessage, ctx: Context) -> None:
    """A Cloud Storage notification → the latest upload of each model that watches the object."""
    notice = ObjectNotice.of(message)
    for model, quiet in watchers(notice, manifests(ctx), ctx.settings.data_bucket):
        recorded = ctx.ledger.note_arrival(model, functools.partial(_update, model=model, quiet=quiet, notice=notice))
        ctx.info(
            f"new data for {model}: {notice.name}" + ("" if recorded else " (already noted)"),
            model=model,
            generation=notice.generation,
        )


def start_on_data(message: PubSubMessage, ctx: Context) -> None:
    """On a tick, request the run of every model whose new data has been quiet long enough."""
    Event.from_message(message, [events.WATCH_TICKED])
    moment = now()
    for arrival in ctx.ledger.arrivals(("pending", "==", True)):
        found = due(arrival, moment)
        if found is None:
            continue
        run_id, data = found
        ctx.request_run(run_id, data)
        ctx.ledger.answer_arrival(str(arrival["model"]), str(arrival["last_upload"]))
        ctx.info(f"new data quiet for {arrival['quiet_seconds']} s: run requested", run_id, model=data["model"])
