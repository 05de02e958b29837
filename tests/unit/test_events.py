"""Events: binary content mode both ways, validation that names every problem."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cd4ml import events
from cd4ml.errors import InvalidEvent
from cd4ml.events import Event, PubSubMessage


def _message(attributes: dict[str, str], data: bytes) -> PubSubMessage:
    return PubSubMessage(
        message_id="42", publish_time=datetime(2026, 1, 1, 3, 0, 5, tzinfo=UTC), attributes=attributes, data=data
    )


def test_round_trip_keeps_every_attribute_and_the_data() -> None:
    event = Event.new(
        events.DATA_FETCHED,
        "digits-20260101t030000z",
        {
            "model": "digits",
            "dataset": {"uri": "gs://b/datasets/digits/x/", "sha256": "a" * 64, "rows": 3, "bytes": 10, "files": 1},
        },
        source="//t",
    )
    data, attributes = event.to_message()
    assert attributes["ce-specversion"] == "1.0"
    assert attributes["ce-subject"] == "digits-20260101t030000z"
    assert attributes["content-type"] == "application/json"
    back = Event.from_message(_message(attributes, data), [events.DATA_FETCHED])
    assert back == event
    assert back.data["dataset"]["rows"] == 3


def test_event_ids_are_deterministic_per_run_and_type() -> None:
    a = Event.new(events.RUN_REQUESTED, "digits-20260101t030000z", {"model": "digits"}, source="//t")
    b = Event.new(events.RUN_REQUESTED, "digits-20260101t030000z", {"model": "digits"}, source="//t")
    c = Event.new(events.RUN_REQUESTED, "digits-20260102t030000z", {"model": "digits"}, source="//t")
    assert a.id == b.id != c.id


def test_publishing_invalid_data_names_every_problem() -> None:
    with pytest.raises(InvalidEvent) as caught:
        Event.new(events.DATA_FETCHED, "r", {"model": "Bad Name", "dataset": {"uri": "s3://x"}}, source="//t")
    message = caught.value.message
    for field in ("model", "dataset/uri", "'sha256' is a required property", "'rows' is a required property"):
        assert field in message


def test_receiving_collects_all_envelope_and_data_problems_at_once() -> None:
    attributes = {"ce-specversion": "0.3", "ce-type": events.RUN_REQUESTED, "content-type": "text/plain"}
    with pytest.raises(InvalidEvent) as caught:
        Event.from_message(_message(attributes, b'{"model": 7}'), [events.RUN_REQUESTED])
    problems = caught.value.problems
    assert any("ce-specversion" in p for p in problems)
    assert any("ce-source" in p for p in problems)
    assert any("content-type" in p for p in problems)
    assert any(p.startswith("model:") for p in problems)


@pytest.mark.parametrize(
    ("attributes", "data", "expected"),
    [
        ({"ce-type": "cd4ml.nope.v1"}, b"{}", "is not a cd4ml event type"),
        ({"ce-type": events.DATA_FETCHED}, b"{}", "is not handled here"),
        ({"ce-type": events.RUN_REQUESTED}, b"not json", "data is not JSON"),
        ({"ce-type": events.RUN_REQUESTED}, b"[1]", "data must be a JSON object"),
    ],
)
def test_wrong_type_or_body_is_invalid(attributes: dict[str, str], data: bytes, expected: str) -> None:
    full = {"ce-specversion": "1.0", "ce-source": "//t", **attributes}
    with pytest.raises(InvalidEvent, match=expected):
        Event.from_message(_message(full, data), [events.RUN_REQUESTED])


def test_scheduler_messages_without_id_and_time_take_the_message_id_and_publish_time() -> None:
    attributes = {"ce-specversion": "1.0", "ce-source": "//cloudscheduler", "ce-type": events.RUN_REQUESTED}
    event = Event.from_message(_message(attributes, json.dumps({"model": "digits"}).encode()), [events.RUN_REQUESTED])
    assert event.id == "42"
    assert event.time == datetime(2026, 1, 1, 3, 0, 5, tzinfo=UTC)
    assert event.subject == ""


def test_push_body_round_trip_and_malformed_bodies() -> None:
    message = _message({"a": "b"}, b"xyz")
    assert PubSubMessage.from_push(message.to_push()).data == b"xyz"
    with pytest.raises(InvalidEvent, match="no 'message' object"):
        PubSubMessage.from_push({"hello": 1})
    with pytest.raises(InvalidEvent, match="not base64"):
        PubSubMessage.from_push({"message": {"data": "%%%"}})


def test_payloads_are_typed_views_of_validated_data() -> None:
    from cd4ml.payloads import DataFetched, RunRequested, TrainingCompleted

    fetched = Event.new(
        events.DATA_FETCHED,
        "digits-20260101t030000z",
        {
            "model": "digits",
            "dataset": {"uri": "gs://b/datasets/digits/x/", "sha256": "a" * 64, "rows": 3, "bytes": 10, "files": 1},
        },
        source="//t",
    )
    assert DataFetched.of(fetched).dataset.rows == 3
    requested = Event.new(events.RUN_REQUESTED, "", {"model": "digits"}, source="//t")
    assert RunRequested.of(requested).scheduled_time is None and RunRequested.of(requested).trigger == "manual"
    completed = Event.new(
        events.TRAINING_COMPLETED,
        "r",
        {"model": "digits", "job": "j", "model_artifact": {"uri": "gs://b/m/model.joblib", "sha256": "b" * 64}},
        source="//t",
    )
    assert TrainingCompleted.of(completed).model_artifact.to_dict() == {
        "uri": "gs://b/m/model.joblib",
        "sha256": "b" * 64,
    }


@pytest.mark.parametrize("when", ["tomorrow", "2030-13-01T00:00:00Z", "2030-01-01T00:00:00", "0001-01-01T00:00:00Z"])
def test_a_scheduled_time_that_is_no_rfc3339_date_time_is_invalid(when: str) -> None:
    data = json.dumps({"model": "digits", "scheduled_time": when}).encode()
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//t",
        "ce-type": events.RUN_REQUESTED,
        "content-type": "application/json",
    }
    with pytest.raises(InvalidEvent, match=r"scheduled_time: .* is not a 'date-time'"):
        Event.from_message(_message(attributes, data), [events.RUN_REQUESTED])


def test_a_huge_value_is_not_copied_whole_into_the_error() -> None:
    data = json.dumps({"model": "x" * 100_000}).encode()
    attributes = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "//t",
        "ce-type": events.RUN_REQUESTED,
        "content-type": "application/json",
    }
    with pytest.raises(InvalidEvent) as refused:
        Event.from_message(_message(attributes, data), [events.RUN_REQUESTED])
    assert len(refused.value.message) < 2000
