"""Runs on new data: which notifications count, which model they are for, and the quiet period before one run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cd4ml_models import folder as models

from cd4ml.errors import PermanentError
from cd4ml.events import PubSubMessage
from cd4ml.manifest import parse
from cd4ml.stages.arrival import ObjectNotice, arrival_update, due, watchers

DATA = "cd4ml-local-data"
BASE = models.read(Path(__file__).resolve().parents[2] / "examples" / "digits")
WATCHING = parse({**BASE.raw, "trigger": {"on_new_data": {"quiet_seconds": 30}}})
AT = datetime(2030, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def _notice(name: str = "sources/digits/part-2.csv", event: str = "OBJECT_FINALIZE", **extra: str) -> PubSubMessage:
    """A notification as Cloud Storage publishes it with payload JSON_API_V1 (pubsub-notifications, Attributes)."""
    attributes = {
        "notificationConfig": f"projects/_/buckets/{DATA}/notificationConfigs/1",
        "eventType": event,
        "payloadFormat": "JSON_API_V1",
        "bucketId": DATA,
        "objectId": name,
        "objectGeneration": "1767268800250000",
        "eventTime": "2030-01-01T12:00:00.250Z",
        **extra,
    }
    resource = {"kind": "storage#object", "bucket": DATA, "name": name, "generation": "1767268800250000"}
    return PubSubMessage(message_id="1", publish_time=AT, attributes=attributes, data=json.dumps(resource).encode())


def test_a_finalized_object_under_a_watching_models_prefix_is_its_new_data() -> None:
    notice = ObjectNotice.of(_notice())
    assert notice.event_time == AT.replace(microsecond=250_000)
    assert watchers(notice, [WATCHING, BASE], DATA) == [("digits", 30)]  # BASE does not ask for it


@pytest.mark.parametrize(
    "message",
    [
        _notice(event="OBJECT_DELETE"),
        _notice(event="OBJECT_METADATA_UPDATE"),
        _notice(name="sources/other/x.csv"),
        _notice(name="datasets/digits/" + "a" * 64 + "/digits.csv"),  # fetch_data's own snapshot
        _notice(bucketId="another-bucket"),
    ],
)
def test_deletes_other_prefixes_snapshots_and_other_buckets_start_nothing(message: PubSubMessage) -> None:
    assert watchers(ObjectNotice.of(message), [WATCHING], DATA) == []


def test_a_message_that_is_not_a_storage_notification_is_refused_naming_what_is_missing() -> None:
    bare = PubSubMessage(message_id="1", publish_time=AT, attributes={"eventTime": "soon"}, data=b"{}")
    with pytest.raises(PermanentError) as refused:
        ObjectNotice.of(bare)
    assert {"attribute bucketId is missing", "attribute objectId is missing"} <= set(refused.value.problems)
    assert any("eventTime" in p for p in refused.value.problems)


def _arrival(at: datetime, current: dict[str, Any] | None = None) -> dict[str, Any] | None:
    message = _notice(eventTime=at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z")
    return arrival_update(current, "digits", 30, ObjectNotice.of(message))


def test_a_duplicate_or_older_notification_changes_nothing_and_a_later_one_moves_the_last_upload() -> None:
    first = _arrival(AT)
    assert first is not None and first["pending"] is True
    assert _arrival(AT, first) is None  # the same notification again
    assert _arrival(AT - timedelta(seconds=5), first) is None  # delivered out of order
    later = _arrival(AT + timedelta(seconds=3), first)
    assert later is not None and later["last_upload"] == "2030-01-01T12:00:03.250Z"


def test_one_run_after_the_quiet_period_for_the_slot_of_the_last_upload() -> None:
    arrival = _arrival(AT + timedelta(seconds=3), _arrival(AT))
    assert arrival is not None
    assert due(arrival, AT + timedelta(seconds=32)) is None  # quiet for 29 s only
    run_id, data = due(arrival, AT + timedelta(seconds=33.25)) or ("", {})
    assert run_id == "digits-20300101t120003z"
    assert data == {"model": "digits", "scheduled_time": "2030-01-01T12:00:03.000Z", "trigger": "new_data"}
    assert due(arrival, AT + timedelta(hours=1)) == (run_id, data)  # a duplicate tick: the same run
    answered = {**arrival, "requested_for": arrival["last_upload"], "pending": False}
    assert due(answered, AT + timedelta(hours=1)) is None
