"""The run record and the pure transition the ledger applies: run ids, status rules, de-duplication, champion."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cd4ml import events
from cd4ml.events import Event
from cd4ml.ledger import run_id
from cd4ml.run import Run, RunId, is_run_id
from cd4ml.transition import Change, apply, merge, status_after

STAMP = "2030-01-01T00:00:00.000Z"


def _doc(**extra: Any) -> dict[str, Any]:
    return {
        "run_id": "digits-20300101t000000z",
        "model": "digits",
        "status": "running",
        "created_at": STAMP,
        "updated_at": STAMP,
        "events": [],
        **extra,
    }


def _event(type_: str, data: dict[str, Any]) -> Event:
    return Event.new(type_, "digits-20300101t000000z", data, source="//test")


FETCHED = {
    "model": "digits",
    "dataset": {
        "uri": "gs://b/datasets/digits/" + "a" * 64 + "/",
        "sha256": "a" * 64,
        "rows": 3,
        "bytes": 9,
        "files": 1,
    },
}
TRIGGERED = {"model": "digits", "event_id": "e", "execution_id": "x", "application": "digits", "pipeline": "p"}
PROMOTED = {
    "model": "digits",
    "alias": "champion",
    "reference": "r/digits@sha256:" + "2" * 64,
    "digest": "sha256:" + "2" * 64,
    "previous_run_id": "",
    "previous_digest": "",
}


def test_run_id_derives_from_model_and_scheduled_time_and_parses_back() -> None:
    rid = run_id("digits", datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC))
    assert rid == "digits-20260102t030405z"
    assert RunId.parse(rid) == RunId("digits", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert RunId.parse("my-model-2-20260102t030405z").model == "my-model-2"
    assert is_run_id(rid) and not is_run_id("digits") and not is_run_id("../etc")
    with pytest.raises(ValueError, match="is not a run id"):
        RunId.parse("runs/../x")


def test_run_record_round_trips_and_keeps_unknown_fields() -> None:
    doc = _doc(
        trigger="schedule",
        dataset={"uri": "gs://b/d/", "sha256": "a" * 64, "rows": 3, "bytes": 9, "files": 1},
        training={"job": "j", "state": "JOB_STATE_RUNNING", "active": True},
        image={"build_id": "b", "status": "WORKING", "progress": {"QUEUED": "t"}},
        error={"stage": "evaluate", "message": "m", "problems": ["p"]},
        future_field={"x": 1},
    )
    run = Run.from_document(doc)
    assert run.training is not None and run.training.active and run.image.progress == {"QUEUED": "t"}
    assert run.dataset is not None and run.dataset.rows == 3
    assert Run.from_document(run.to_document()) == run
    assert run.to_document()["future_field"] == {"x": 1}


def test_status_follows_the_catalog_and_a_finished_run_stays_finished() -> None:
    assert status_after("running", events.DATA_FETCHED) == "running"
    assert status_after("running", events.TRAINING_FAILED) == "failed"
    assert status_after("running", events.EVALUATION_FAILED) == "failed"
    assert status_after("running", events.CANARY_TRIGGERED) == "running"  # production has not proven it yet
    assert status_after("running", events.CANARY_FAILED) == "failed"
    assert status_after("running", events.MODEL_PROMOTED) == "succeeded"
    assert status_after("failed", events.MODEL_PROMOTED) == "failed"


def test_an_event_recorded_twice_changes_nothing() -> None:
    fetched = _event(events.DATA_FETCHED, FETCHED)
    first = apply(_doc(), Change(event=fetched.summary(), fields={"dataset.rows": 3}), STAMP)
    second = apply(first.record, Change(event=fetched.summary(), fields={"dataset.rows": 99}), STAMP)
    assert first.changed and not second.changed
    assert second.record["dataset"] == {"rows": 3}


def test_an_ended_run_keeps_its_status_and_first_error() -> None:
    ended = _doc(status="failed", error={"stage": "evaluate", "message": "below threshold"})
    applied = apply(
        ended,
        Change(event=_event(events.MODEL_PROMOTED, PROMOTED).summary(), error={"stage": "x", "message": "later"}),
        STAMP,
    )
    assert applied.record["status"] == "failed"
    assert applied.record["error"]["message"] == "below threshold"
    assert applied.champion is None


def test_the_run_that_succeeds_becomes_champion_with_what_it_was_judged_on() -> None:
    doc = _doc(
        evaluation={"passed": True, "metrics": {"accuracy": 0.97}},
        model_artifact={"uri": "gs://b/m", "sha256": "c" * 64},
    )
    triggered = apply(doc, Change(event=_event(events.CANARY_TRIGGERED, TRIGGERED).summary()), STAMP)
    assert triggered.record["status"] == "running" and triggered.champion is None
    promotion = {"alias": "champion", "reference": PROMOTED["reference"], "digest": PROMOTED["digest"]}
    applied = apply(
        triggered.record,
        Change(event=_event(events.MODEL_PROMOTED, PROMOTED).summary(), fields={"promotion": promotion}),
        STAMP,
    )
    assert applied.record["status"] == "succeeded"
    assert applied.champion == {
        "run_id": "digits-20300101t000000z",
        "metrics": {"accuracy": 0.97},
        "model_artifact": {"uri": "gs://b/m", "sha256": "c" * 64},
        "since": STAMP,
        "reference": PROMOTED["reference"],
        "digest": PROMOTED["digest"],
        "alias": "champion",
    }
    again = apply(applied.record, Change(fields={"canary.pipeline": "p"}), STAMP)
    assert again.champion is None  # promoted once
    superseded = apply(
        triggered.record,
        Change(
            event=_event(events.MODEL_PROMOTED, PROMOTED).summary(),
            fields={"promotion": {**promotion, "superseded_by": "digits-20300101t010000z"}},
        ),
        STAMP,
    )
    # An interrupted promotion overtaken by a newer run's: the run succeeded, the newer run stays champion.
    assert superseded.record["status"] == "succeeded" and superseded.champion is None


def test_merge_is_deep_like_firestore_dotted_updates() -> None:
    assert merge({"training": {"job": "j", "state": "A"}}, {"training": {"state": "B"}}) == {
        "training": {"job": "j", "state": "B"}
    }
