"""Every malformed input gets its reason: a long value never pushes the reason out of a bounded text."""

from __future__ import annotations

import json
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

import pytest

from cd4ml import events
from cd4ml.bus import Bus
from cd4ml.errors import InvalidEvent
from cd4ml.events import Event, PubSubMessage

_ATTRIBUTES = {"ce-specversion": "1.0", "ce-type": events.RUN_REQUESTED, "ce-source": "//test", "ce-id": "1"}


class _Publisher:
    """Records what would be published (the Pub/Sub client's ``publish`` signature)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future[str]:
        self.published.append((topic, data, attributes))
        done: Future[str] = Future()
        done.set_result("1")
        return done


def _message(data: dict[str, Any], **attributes: str) -> PubSubMessage:
    return PubSubMessage(
        message_id="7",
        publish_time=datetime(2026, 1, 1, tzinfo=UTC),
        attributes={**_ATTRIBUTES, **attributes},
        data=json.dumps(data).encode(),
    )


def _dead_letter_reason(message: PubSubMessage) -> str:
    with pytest.raises(InvalidEvent) as caught:
        Event.from_message(message, [events.RUN_REQUESTED])
    publisher = _Publisher()
    Bus("p", publisher).dead_letter("dead", message, stage="fetch_data", error=caught.value.message)
    [(_, _, attributes)] = publisher.published
    return attributes["cd4ml-error"]


def test_a_huge_value_is_cut_and_jsonschemas_own_words_are_kept() -> None:
    reason = _dead_letter_reason(_message({"model": "digits", "requested_by": "x" * 700_000}))
    assert "requested_by" in reason and "is too long" in reason
    assert "bytes cut)" in reason and len(reason.encode()) <= 1024


def test_a_name_of_emoji_keeps_does_not_match_for_every_field_it_breaks() -> None:
    reason = _dead_letter_reason(
        _message({"model": "\N{GRINNING FACE}" * 120, "requested_by": "\N{GRINNING FACE}" * 300, "trigger": "x" * 900})
    )
    assert "model" in reason and "does not match" in reason
    assert "requested_by" in reason and "is too long" in reason
    assert "trigger" in reason and "is not one of" in reason
    assert len(reason.encode()) <= 1024


@pytest.mark.parametrize(
    "when",
    ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "9999-06-01T00:00:00Z", "0999-12-31T23:59:59Z"],
)
def test_a_time_at_the_edge_of_the_calendar_is_a_permanent_error_naming_its_field(when: str) -> None:
    """Such a scheduled_time raised OverflowError: retried 5 times, then dead-lettered by Pub/Sub with no reason."""
    with pytest.raises(InvalidEvent) as caught:
        Event.from_message(_message({"model": "digits", "scheduled_time": when}), [events.RUN_REQUESTED])
    assert any(p.startswith("scheduled_time:") and "outside the instants" in p for p in caught.value.problems)
    with pytest.raises(InvalidEvent) as caught:
        Event.from_message(_message({"model": "digits"}, **{"ce-time": when}), [events.RUN_REQUESTED])
    assert any(p.startswith("ce-time") for p in caught.value.problems)


def test_a_request_at_the_end_of_year_9999_is_refused_before_any_window_arithmetic() -> None:
    """fetch_data's window (24 hours after the request) overflowed on a ce-time late in year 9999."""
    from cd4ml.payloads import RunRequested
    from cd4ml.stages.fetch import run_for

    late = _message(
        {"model": "digits", "scheduled_time": "9999-12-31T22:00:00Z"}, **{"ce-time": "9999-12-31T23:00:00Z"}
    )
    with pytest.raises(InvalidEvent) as caught:
        event = Event.from_message(late, [events.RUN_REQUESTED])
        run_for(event, RunRequested.of(event), manifest=None)  # type: ignore[arg-type]  # scheduled: no manifest read
    assert {p.split(" ")[0].rstrip(":") for p in caught.value.problems} == {"scheduled_time", "ce-time"}
