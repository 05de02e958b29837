"""Every malformed input gets its reason: a long value never pushes the reason out of a bounded text."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cd4ml import events
from cd4ml.bus import Bus
from cd4ml.errors import InvalidEvent
from cd4ml.events import Event, PubSubMessage

_ATTRIBUTES = {"ce-specversion": "1.0", "ce-type": events.RUN_REQUESTED, "ce-source": "//test", "ce-id": "1"}


class _Publisher:
    """Records what is published (the Pub/Sub client's ``publish`` signature), refusing what Pub/Sub refuses as the
    local stack's Pub/Sub does (``local_emulator.pubsub.limits``), or everything when ``refuse`` says so."""

    def __init__(self, refuse: str = "") -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.refuse = refuse

    def publish(self, topic: str, data: bytes, **attributes: str) -> Future[str]:
        from google.api_core.exceptions import InvalidArgument
        from google.pubsub_v1 import PublishRequest, PubsubMessage
        from local_emulator.pubsub.limits import publish_problem

        request = PublishRequest(topic=topic, messages=[PubsubMessage(data=data, attributes=attributes)])
        problem = self.refuse or publish_problem(request, PublishRequest.pb(request).ByteSize())
        done: Future[str] = Future()
        if problem:
            done.set_exception(InvalidArgument(problem))  # type: ignore[no-untyped-call]
        else:
            self.published.append((topic, data, attributes))
            done.set_result(str(len(self.published)))
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


@pytest.fixture
def fetch_data(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, _Publisher]]:
    """The fetch_data function as functions-framework serves it (no Google client: its bus publishes to a recorder)."""
    from functions_framework import create_app

    from cd4ml import catalog, runtime

    for name, value in {
        "CD4ML_PROJECT": "p",
        "CD4ML_STAGE": "fetch_data",
        "CD4ML_DEAD_LETTER_TOPIC": catalog.dead_letter_topic("fetch_data"),
    }.items():
        monkeypatch.setenv(name, value)
    runtime.context.cache_clear()
    publisher = _Publisher()
    runtime.context().__dict__["bus"] = Bus("p", publisher)
    main = Path(__file__).resolve().parents[2] / "functions" / "main.py"
    yield create_app("fetch_data", str(main), "cloudevent").test_client(), publisher  # type: ignore[no-untyped-call]
    runtime.context.cache_clear()


_PATH = "/projects/p/topics/cd4ml-run-requested-v1"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"message": {"data": "e30=", "messageId": "1"', "not JSON: Expecting ',' delimiter at line 1 column 46"),
        (b"", "the request body is empty"),
        (b"[1, 2]", "a JSON array, not an object"),
        (b'"push"', "a JSON string, not an object"),
        (b'{"foo": 1}', "no 'message' object, no 'subscription'"),
        (b'{"message": {"messageId": "1"}, "subscription": "s"}', "no 'message.data'"),
    ],
)
def test_a_body_that_is_no_push_gets_400_naming_the_problem(
    fetch_data: tuple[Any, _Publisher], body: bytes, named: str
) -> None:
    """functions-framework answered these with a 400 naming nothing, one echoing every header, or a 500."""
    client, publisher = fetch_data
    answer = client.post(_PATH, data=body, headers={"Content-Type": "application/json", "Authorization": "Bearer t0k"})
    text = answer.get_data(as_text=True)
    assert answer.status_code == 400 and named in text, text
    assert "expected a Pub/Sub push body" in text and "t0k" not in text and "\n" not in text
    assert publisher.published == []  # nothing reached a stage


def _push(data: bytes, **attributes: str) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {**_ATTRIBUTES, **attributes},
            "messageId": "9",
            "publishTime": "2030-01-01T00:00:00Z",
        },
        "subscription": "projects/p/subscriptions/cd4ml-fetch-data",
        "deliveryAttempt": 1,
    }


def test_a_body_over_pubsubs_limit_gets_413_naming_it_and_one_dead_letter_that_fits(
    fetch_data: tuple[Any, _Publisher],
) -> None:
    """It got a 500: the event was rejected, then its dead-letter copy was refused (over 10 MB)."""
    client, publisher = fetch_data
    data = json.dumps({"model": "digits", "requested_by": "x" * 11_000_000}).encode()
    answer = client.post(_PATH, json=_push(data))
    assert answer.status_code == 413
    assert "10485760 bytes" in answer.get_data(as_text=True)
    [(topic, copy, attributes)] = publisher.published
    assert topic.endswith(catalog_dead_letter("fetch_data")) and data.startswith(copy)
    assert f"cut from {len(data)} to {len(copy)} bytes" in attributes["cd4ml-data-truncated"]
    assert "10485760 bytes" in attributes["cd4ml-error"]


def test_a_dead_letter_copy_near_the_limit_is_cut_to_fit() -> None:
    publisher = _Publisher()
    long = {f"x-{n}": "v" * 1000 for n in range(120)}
    near = PubSubMessage("5", datetime(2030, 1, 1, tzinfo=UTC), {**_ATTRIBUTES, **long}, b"d" * (10 * 1024 * 1024 - 50))
    Bus("p", publisher).dead_letter("dead", near, stage="fetch_data", error="invalid event: " + "'" + "y" * 5000 + "'")
    [(_, copy, attributes)] = publisher.published
    assert len(attributes) == 100 and attributes["cd4ml-dropped-attributes"] == str(len(near.attributes) - 95)
    assert near.data.startswith(copy) and "cd4ml-data-truncated" in attributes


def test_a_dead_letter_copy_pubsub_refuses_gets_4xx_with_pubsubs_words(fetch_data: tuple[Any, _Publisher]) -> None:
    """It got a 500 (retried, then dead-lettered by Pub/Sub alone with no reason)."""
    client, publisher = fetch_data
    publisher.refuse = "Request payload size exceeds the limit: 10485760 bytes."
    answer = client.post(_PATH, json=_push(b'{"model": 7}'))
    assert answer.status_code == 400
    assert "refused by Pub/Sub: Request payload size exceeds the limit: 10485760 bytes." in answer.get_data(
        as_text=True
    )


def catalog_dead_letter(stage: str) -> str:
    from cd4ml import catalog

    return catalog.dead_letter_topic(stage)


def test_a_stages_own_type_error_on_a_readable_push_is_still_a_500(tmp_path: Path) -> None:
    """The 400 for bodies functions-framework cannot convert must not swallow a stage's bug: that is retried."""
    import functions_framework

    source = tmp_path / "main.py"
    source.write_text(
        "import functions_framework\nfrom cd4ml import push\npush.install(functions_framework.errorhandler)\n\n"
        "@functions_framework.cloud_event\ndef handler(event):\n    raise TypeError('a bug')\n"
    )
    app = functions_framework.create_app("handler", str(source), "cloudevent")  # type: ignore[no-untyped-call]
    answer = app.test_client().post(_PATH, json=_push(b"{}"))
    assert answer.status_code == 500
