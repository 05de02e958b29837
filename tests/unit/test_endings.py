"""Every way a run ends is announced: give-up after the last delivery, a dead letter's work never done, a stale
run, an unreadable training job — each emits cd4ml.run.failed.v1 through the outbox, once, and notify posts it.

The handlers run against the in-memory ledger and bus (tests/stagekit.py), through runtime.dispatch.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from cd4ml import events
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now
from cd4ml.run import Run
from cd4ml.stages import dead_letters, notify, training
from tests.stagekit import Kit, as_message, manifest

RUN = "digits-20300101t030000z"


def _event_log(*types: str) -> list[dict[str, str]]:
    return [{"id": f"e{n}", "type": t, "time": "2030-01-01T03:00:00.000Z"} for n, t in enumerate(types)]


def _dead_letter(subscription: str, **extra: str) -> PubSubMessage:
    attributes = {
        "ce-id": "e1",
        "ce-type": events.DATA_FETCHED,
        "ce-subject": RUN,
        "CloudPubSubDeadLetterSourceSubscription": "projects/p/subscriptions/cd4ml-submit-training",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        **extra,
    }
    return PubSubMessage(
        message_id="m9", publish_time=now(), attributes=attributes, data=b"{}", subscription=subscription
    )


def _announced(kit: Kit) -> dict[str, Any]:
    """The one run.failed the kit's bus carried, as data; the run's record says failed with the same reason."""
    [event] = [e for e in kit.bus.published if e.type == events.RUN_FAILED]
    record = kit.run(RUN)
    assert record["status"] == "failed"
    assert record["error"]["message"] == event.data["reason"]
    assert event.id in record["published"] and not record.get("outbox")
    return dict(event.data)


@pytest.mark.parametrize(
    ("recorded", "extra", "ends"),
    [
        ((events.RUN_REQUESTED, events.DATA_FETCHED), {}, True),  # the last attempt died: nobody ended the run
        ((events.RUN_REQUESTED, events.DATA_FETCHED, events.TRAINING_SUBMITTED), {}, False),  # died after its work
        ((events.RUN_REQUESTED, events.DATA_FETCHED), {"cd4ml-rejected-by": "submit_training"}, False),
        ((events.RUN_REQUESTED, events.DATA_FETCHED), {"cd4ml-exhausted-by": "submit_training"}, False),
    ],
)
def test_a_message_pub_sub_dead_lettered_ends_its_run_after_a_grace_and_says_so(
    recorded: tuple[str, ...], extra: dict[str, str], ends: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the chaos session: a fifth delivery killed with its instance was dead-lettered by Pub/Sub (which
    # counts the attempt) while the run, which never heard of it, waited for the stale sweep (2 h).
    kit = Kit("on_dead_letter")
    kit.seed(RUN, events=_event_log(*recorded))
    message = _dead_letter("projects/p/subscriptions/cd4ml-on-dead-letter-submit-training-dead-letter", **extra)
    kit.deliver(dead_letters.on_dead_letter, message=message)
    dead_letters.end_dead_lettered_runs(kit.ctx)  # within the grace: a duplicate may still do the work
    assert kit.run(RUN)["status"] == "running"
    assert bool((kit.run(RUN).get("dead_letter") or {}).get("pending")) == ends
    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    dead_letters.end_dead_lettered_runs(kit.ctx)
    if not ends:
        assert kit.run(RUN)["status"] == "running" and kit.bus.published == []
        return
    data = _announced(kit)
    assert data["stage"] == "submit_training" and data["cause"] == "dead_letter"
    assert "after 5 delivery attempts on cd4ml-submit-training" in data["reason"]
    assert "cd4ml dead-letters replay" in data["reason"]
    assert kit.run(RUN)["dead_letter"]["pending"] is False
    dead_letters.end_dead_lettered_runs(kit.ctx)  # the next tick: nothing more
    assert len(kit.bus.published) == 1


def test_a_dead_letter_whose_work_is_in_progress_or_done_ends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session: a twin copy took the claim over after the dead letter arrived and succeeded.
    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    kit = Kit("on_dead_letter")
    kit.seed(RUN, events=_event_log(events.RUN_REQUESTED, events.DATA_FETCHED))
    holder = {"state": "claimed", "lease_until": format_time(now() + timedelta(minutes=5)), "holder": "h"}
    assert kit.ledger.store.create(f"runs/{RUN}/effects/training-job", holder)
    kit.deliver(dead_letters.on_dead_letter, message=_dead_letter("projects/p/subscriptions/cd4ml-submit-training"))
    dead_letters.end_dead_lettered_runs(kit.ctx)  # a delivery is carrying the work out: not now
    assert kit.run(RUN)["status"] == "running" and kit.run(RUN)["dead_letter"]["pending"] is True
    kit.ledger.store.update(f"runs/{RUN}/effects/training-job", {"state": "done"})
    kit.ledger.store.update(f"runs/{RUN}", {"events": _event_log(*recorded_then_submitted())})
    dead_letters.end_dead_lettered_runs(kit.ctx)  # done meanwhile: the mark is cleared, the run goes on
    assert kit.run(RUN)["status"] == "running" and kit.run(RUN)["dead_letter"]["pending"] is False
    assert kit.bus.published == []


def recorded_then_submitted() -> tuple[str, ...]:
    return (events.RUN_REQUESTED, events.DATA_FETCHED, events.TRAINING_SUBMITTED)


def test_a_dead_lettered_run_is_ended_with_the_last_error_its_stage_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session's long Vertex outage: some attempts were never counted (pushes answered 503 while
    # every instance was busy), Pub/Sub dead-lettered the message first, and the run ended without the outage.
    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    kit = Kit("on_dead_letter")
    kit.seed(
        RUN,
        events=_event_log(events.RUN_REQUESTED, events.DATA_FETCHED),
        last_failure={"stage": "submit_training", "error": "ServiceUnavailable: 503 Vertex AI unavailable"},
    )
    kit.deliver(dead_letters.on_dead_letter, message=_dead_letter("projects/p/subscriptions/cd4ml-submit-training"))
    dead_letters.end_dead_lettered_runs(kit.ctx)
    data = _announced(kit)
    assert data["stage"] == "submit_training"
    assert "Last error seen by submit_training: ServiceUnavailable: 503 Vertex AI unavailable" in data["reason"]


def test_a_stage_that_gives_up_on_its_last_delivery_ends_the_run_and_announces_it() -> None:
    kit = Kit("promote")
    kit.seed(RUN, events=_event_log(events.RUN_REQUESTED))
    succeeded = Event.new(events.CANARY_SUCCEEDED, RUN, {"model": "digits", "execution_id": "x"}, source="//t")

    def down(message: PubSubMessage, ctx: Any) -> None:
        raise RetryableError("registry unavailable")

    with pytest.raises(RetryableError):
        kit.deliver(down, succeeded, attempt=4)  # not the last: Pub/Sub redelivers
    assert kit.run(RUN)["status"] == "running" and kit.bus.published == []
    kit.deliver(down, succeeded, attempt=5)
    data = _announced(kit)
    assert data == {"model": "digits", "stage": "promote", "cause": "gave_up", "reason": data["reason"]}
    assert "gave up after 5 deliveries of cd4ml.canary.succeeded.v1" in data["reason"]
    assert "RetryableError: registry unavailable" in data["reason"]
    [dead] = kit.bus.dead_letters
    assert dead.exhausted and dead.stage == "promote"
    kit.deliver(down, succeeded, attempt=6)  # a duplicate past the limit: the first ending stands, announced once
    assert len([e for e in kit.bus.published if e.type == events.RUN_FAILED]) == 1


def test_giving_up_on_a_run_that_already_ended_announces_nothing_more() -> None:
    kit = Kit("promote")
    kit.seed(RUN, status="failed", error={"stage": "trigger_canary", "message": "canary failed"})
    succeeded = Event.new(events.CANARY_SUCCEEDED, RUN, {"model": "digits", "execution_id": "x"}, source="//t")

    def down(message: PubSubMessage, ctx: Any) -> None:
        raise RetryableError("registry unavailable")

    kit.deliver(down, succeeded, attempt=5)
    assert kit.bus.published == []
    assert kit.run(RUN)["error"]["message"] == "canary failed"


def test_a_stale_run_is_ended_and_announced_once() -> None:
    kit = Kit("watch_training")
    old = format_time(now() - timedelta(hours=3))
    kit.seed(RUN, updated_at=old, events=_event_log(events.RUN_REQUESTED, events.DATA_FETCHED))
    kit.seed("digits-20300101t040000z", updated_at=old, training={"active": True, "job": "jobs/1"})
    training.end_stale_runs(kit.ctx)
    training.end_stale_runs(kit.ctx)
    data = _announced(kit)
    assert data["cause"] == "stale" and "no progress for 7200 s after cd4ml.data.fetched.v1" in data["reason"]
    assert kit.run("digits-20300101t040000z")["status"] == "running"  # a job in flight ends on its own


def test_a_training_job_vertex_cannot_report_on_ends_its_run_in_time() -> None:
    # Found by the chaos session: a job created just before a long Vertex outage was watched forever (the stale
    # sweep leaves runs with a job in flight alone, trusting Vertex's own timeout).
    kit = Kit("watch_training")
    kit.seed(RUN, training={"job": "jobs/1", "active": True})
    down = RetryableError("Vertex AI unavailable")
    training.unreadable(kit.ctx, Run.from_document(kit.run(RUN)), down)  # first failure: noted, nothing ended
    assert kit.run(RUN)["status"] == "running" and kit.run(RUN)["training"]["unreadable_since"]
    kit.ledger.note(RUN, {"training.unreadable_since": format_time(now() - timedelta(seconds=60))})
    training.unreadable(kit.ctx, Run.from_document(kit.run(RUN)), down)  # a minute of outage: the job may be fine
    assert kit.run(RUN)["status"] == "running"
    kit.ledger.note(RUN, {"training.unreadable_since": format_time(now() - timedelta(hours=3))})
    training.unreadable(kit.ctx, Run.from_document(kit.run(RUN)), down)
    data = _announced(kit)
    assert data["stage"] == "watch_training" and data["cause"] == "unreadable"
    assert "could not read training job jobs/1 for 7200 s: Vertex AI unavailable" in data["reason"]
    assert kit.run(RUN)["training"]["active"] is False


def test_notify_posts_a_run_failed_to_the_models_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    posted: list[tuple[str, dict[str, Any]]] = []

    def post(url: str, payload: dict[str, Any], channel: str, *args: Any, **kwargs: Any) -> int:
        posted.append((url, payload))
        return 200

    monkeypatch.setattr(notify, "post", post)
    monkeypatch.setattr(notify, "webhook_url", lambda template, channel: f"https://hooks.test/{channel}")
    kit = Kit("notify", notify_secrets="file:/dev/null")
    kit.seed(RUN, manifest=manifest(notify=[{"channel": "ops", "format": "slack", "on": ["failed"]}]))
    reason = "gave up after 5 deliveries: <!channel> <https://evil.test|docs>"
    failed = Event.new(
        events.RUN_FAILED,
        RUN,
        {"model": "digits", "stage": "promote", "cause": "gave_up", "reason": reason},
        source="//t",
    )
    kit.deliver(notify.notify, failed)
    kit.deliver(notify.notify, failed)  # a redelivery posts nothing more
    [(url, payload)] = posted
    assert url == "https://hooks.test/ops"
    text = payload["text"]
    assert "run failed (promote: gave up)" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text  # shown, not a mention or a disguised link
    assert json.dumps(payload)


def test_every_ending_event_is_one_notify_hears() -> None:
    from cd4ml import catalog

    cat = catalog.load()
    heard = set(cat.stage("notify").triggers)
    assert set(cat.failed_on) | set(cat.rejected_on) <= heard
    for stage in ("fetch_data", "submit_training", "watch_training", "evaluate", "build_image", "promote"):
        assert events.RUN_FAILED in cat.stage(stage).emits, stage


def test_the_announcement_survives_a_publish_that_failed() -> None:
    kit = Kit("watch_training")
    kit.seed(RUN, updated_at=format_time(now() - timedelta(hours=3)))
    kit.bus.fail = True
    with pytest.raises(RuntimeError):
        training.end_stale_runs(kit.ctx)
    record = kit.run(RUN)
    assert record["status"] == "failed" and record["outbox_pending"] is True
    kit.bus.fail = False
    assert kit.ctx.flush_outbox(older_than_seconds=-1) == 1
    assert kit.bus.types() == [events.RUN_FAILED]
    assert as_message(kit.bus.published[0]).attributes["ce-subject"] == RUN


def test_the_run_record_has_one_vocabulary() -> None:
    """Every property of schemas/run.schema.json is a typed field of Run, and a document round-trips."""
    import dataclasses

    from cd4ml.catalog import SCHEMA_DIR
    from cd4ml.run import Run

    schema = json.loads((SCHEMA_DIR / "run.schema.json").read_text())
    typed = {f.name for f in dataclasses.fields(Run)} - {"extra"}
    assert set(schema["properties"]) - typed == set()
    doc = {
        "run_id": RUN,
        "model": "digits",
        "status": "running",
        "created_at": "t",
        "updated_at": "t",
        "events": [],
        "cache": {"enabled": True},
        "published": ["e1"],
        "rejected_messages": [{"stage": "evaluate", "reason": "r"}],
        "rejected_count": 1,
        "newer_field": {"kept": True},
    }
    run = Run.from_document(doc)
    assert run.cache == {"enabled": True} and run.published == ("e1",) and run.rejected_count == 1
    assert run.extra == {"newer_field": {"kept": True}}
    assert run.to_document() == doc
