"""notify's decisions and delivery: what each event tells people, where it goes, retries, and no leaked URL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cd4ml_models import folder as models
from local_emulator import webhooks as webhook_receiver
from local_emulator.pubsub.topology import plan

from cd4ml import catalog, events
from cd4ml.errors import PermanentError
from cd4ml.events import Event
from cd4ml.manifest import NOTICE_KINDS, Route, parse
from cd4ml.run import Run
from cd4ml.stages import notify

RUN = "digits-20300101t030000z"
MANIFEST = models.read(Path(__file__).resolve().parents[2] / "examples" / "digits")
STAMP = "2030-01-01T03:00:00.000Z"
SHA = "b" * 64


def _run() -> Run:
    return Run.from_document(
        {
            "run_id": RUN,
            "model": "digits",
            "status": "running",
            "created_at": STAMP,
            "updated_at": STAMP,
            "events": [],
            "manifest": MANIFEST.raw,
        }
    )


def _event(type_: str, data: dict[str, Any]) -> Event:
    return Event.new(type_, RUN, data, source="//test")


def test_a_failed_evaluation_names_the_model_run_what_why_and_the_command() -> None:
    failed = _event(
        events.EVALUATION_FAILED,
        {"model": "digits", "metrics": {"accuracy": 0.5}, "gate": {}, "reasons": ["accuracy 0.5000 is below 0.9"]},
    )
    note = notify.notice(failed, _run())
    assert note is not None and note.kind == "failed"
    assert (note.model, note.run_id, note.what) == ("digits", RUN, "run failed (evaluation.failed)")
    assert note.reason == "accuracy 0.5000 is below 0.9" and note.command == f"cd4ml status {RUN}"
    text = note.as_slack()["text"]
    assert all(part in text for part in ("digits", RUN, "run failed", "below 0.9", f"cd4ml status {RUN}"))
    assert note.as_json()["event_id"] == failed.id


def test_an_approval_request_shows_metrics_champion_and_the_commands_to_decide() -> None:
    requested = _event(
        events.APPROVAL_REQUESTED,
        {
            "model": "digits",
            "model_artifact": {"uri": "gs://a/m", "sha256": SHA},
            "metrics": {"accuracy": 0.97},
            "gate": {"champion_value": 0.96, "champion_run": "digits-x"},
            "approvers": ["user:alice@example.com"],
            "expires_at": "2030-01-04T03:00:00.000Z",
        },
    )
    note = notify.notice(requested, _run())
    assert note is not None and note.kind == "approval_requested"
    assert "user:alice@example.com" in note.what and "2030-01-04T03:00:00.000Z" in note.what
    assert note.reason == "accuracy 0.9700 (champion digits-x: 0.9600)"
    assert f"cd4ml approve {RUN} --reason" in note.command and f"cd4ml reject {RUN}" in note.command


def test_a_decision_a_rejection_and_a_promotion_are_news_but_a_plain_clearance_is_not() -> None:
    candidate = {"model": "digits", "model_artifact": {"uri": "gs://a/m", "sha256": SHA}, "metrics": {"accuracy": 0.9}}
    assert notify.notice(_event(events.DELIVERY_CLEARED, candidate), _run()) is None
    approval = {"by": "user:a@example.com", "reason": "fine", "at": STAMP}
    approved = notify.notice(_event(events.DELIVERY_CLEARED, {**candidate, "approval": approval}), _run())
    assert approved is not None and approved.kind == "approval_decided" and approved.reason == "fine"
    rejected = notify.notice(
        _event(
            events.RUN_REJECTED, {"model": "digits", "reason": "no approver decided", "by": "expiry", "expired": True}
        ),
        _run(),
    )
    assert rejected is not None and rejected.kind == "rejected" and "expired" in rejected.what
    promoted = notify.notice(
        _event(
            events.MODEL_PROMOTED,
            {"model": "digits", "alias": "champion", "reference": f"r@sha256:{SHA}", "digest": f"sha256:{SHA}"},
        ),
        _run(),
    )
    assert promoted is not None and promoted.kind == "promoted" and promoted.command == "cd4ml models"


def test_routes_take_only_what_they_asked_for_and_default_to_everything() -> None:
    raw = {**MANIFEST.raw, "notify": [{"channel": "team"}, {"channel": "audit", "format": "json", "on": ["rejected"]}]}
    routes = parse(raw).notify
    assert routes == (Route("team", "slack", NOTICE_KINDS), Route("audit", "json", ("rejected",)))
    failed = notify.notice(_event(events.TRAINING_FAILED, {"model": "digits", "state": "F", "error": "oom"}), _run())
    assert failed is not None and [r.channel for r in notify.routes_for(failed, routes)] == ["team"]
    assert notify.body(failed, routes[1])["reason"] == "oom"


def test_every_trigger_of_notify_is_an_event_it_has_words_for() -> None:
    stage = catalog.load().stage("notify")
    assert stage.observer and len(stage.triggers) > 1 and stage.emits == ()
    names = [name for name, _ in stage.subscriptions]
    assert names == [catalog.subscription_id("notify", t) for t in stage.triggers]
    assert "cd4ml-notify-run-rejected-v1" in names
    assert {s.name for s in plan(catalog.load()).subscriptions} >= set(names)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, webhook_receiver.Receiver]]:
    got = webhook_receiver.Receiver(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), webhook_receiver.handler(got))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", got
    server.shutdown()
    server.server_close()


def test_a_post_is_retried_through_an_outage_and_received_once(
    receiver: tuple[str, webhook_receiver.Receiver],
) -> None:
    url, got = receiver
    got.failures_left = 2
    assert notify.post(f"{url}/slack/team", {"text": "hello"}, "team", delays=(0.0, 0.0)) == 200
    assert [(r["channel"], r["body"]) for r in got.received] == [("team", {"text": "hello"})]


def test_an_undelivered_notice_names_the_channel_and_never_the_url(
    receiver: tuple[str, webhook_receiver.Receiver],
) -> None:
    url, got = receiver
    got.failures_left = 5
    with pytest.raises(notify.NotDelivered) as failed:
        notify.post(f"{url}/slack/team?token=s3cret", {"text": "x"}, "team", delays=(0.0,))
    assert "team" in str(failed.value) and "HTTP 500" in str(failed.value)
    assert "s3cret" not in str(failed.value) and "127.0.0.1" not in str(failed.value)
    with pytest.raises(notify.NotDelivered) as unreachable:
        notify.post("http://127.0.0.1:9/hook?token=s3cret", {"text": "x"}, "team", delays=())
    assert "s3cret" not in str(unreachable.value) and ":9" not in str(unreachable.value)


def test_the_slack_stand_in_refuses_what_slack_refuses(receiver: tuple[str, webhook_receiver.Receiver]) -> None:
    url, got = receiver
    with pytest.raises(PermanentError, match="HTTP 400"):
        notify.post(f"{url}/slack/team", {"username": "cd4ml"}, "team")  # nothing to show: no_text
    assert got.accept("slack", "team", b"not json") == (400, "invalid_payload")
    assert got.accept("json", "audit", b'{"kind": "failed"}') == (200, "ok") and len(got.received) == 1


def test_a_channel_secret_must_hold_a_url(tmp_path: Path) -> None:
    (tmp_path / "notify-team").write_text("https://hooks.example.com/services/T/B/X\n")
    (tmp_path / "notify-bad").write_text("not a url")
    template = f"file:{tmp_path}/notify-{{channel}}"
    assert notify.webhook_url(template, "team") == "https://hooks.example.com/services/T/B/X"
    with pytest.raises(PermanentError, match="not an http"):
        notify.webhook_url(template, "bad")
    with pytest.raises(PermanentError, match="no webhook URL for notification channel missing"):
        notify.webhook_url(template, "missing")


def test_notify_is_an_observer_whose_last_failed_delivery_is_left_to_pub_sub(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the last delivery a stage ends the run failed (give_up); notify re-raises instead: the run is untouched and
    Pub/Sub's dead-letter policy keeps the message."""
    import base64

    from cloudevents.http import CloudEvent

    from cd4ml import runtime
    from cd4ml.errors import RetryableError

    for name, value in {
        "CD4ML_PROJECT": "p",
        "CD4ML_STAGE": "notify",
        "CD4ML_DEAD_LETTER_TOPIC": catalog.dead_letter_topic("notify"),
    }.items():
        monkeypatch.setenv(name, value)
    runtime.context.cache_clear()
    failed = _event(events.TRAINING_FAILED, {"model": "digits", "state": "F", "error": "oom"})
    data, attributes = failed.to_message()
    push = {
        "message": {"attributes": attributes, "data": base64.b64encode(data).decode(), "messageId": "1"},
        "subscription": "projects/p/subscriptions/cd4ml-notify-training-failed-v1",
        "deliveryAttempt": 5,
    }
    wrapper = CloudEvent({"type": "google.cloud.pubsub.topic.v1.messagePublished", "source": "//pubsub"}, push)

    def outage(message: Any, ctx: Any) -> None:
        raise RetryableError("notification channel team did not take the notice: HTTP 500")

    try:
        with pytest.raises(RetryableError, match="did not take the notice"):
            runtime.dispatch(wrapper, outage)
        assert runtime.context().observer
    finally:
        runtime.context.cache_clear()
