"""Every stage's decisions, with real Event and Run values and no emulator (the stages' I/O is elsewhere)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cd4ml_models import folder as models

from cd4ml import events
from cd4ml.errors import InvalidEvent, PermanentError
from cd4ml.events import Event, PubSubMessage
from cd4ml.payloads import Artifact, RunRequested
from cd4ml.run import Run
from cd4ml.snapshot import Dataset
from cd4ml.stages import canary, delivery, evaluation, fetch, training

RUN = "digits-20300101t030000z"
REGISTRY = "127.0.0.1:5000/cd4ml"
MANIFEST = models.read(Path(__file__).resolve().parents[2] / "examples" / "digits")
MODEL = Artifact(uri=f"gs://a/runs/{RUN}/model/model.joblib", sha256="b" * 64)
STAMP = "2030-01-01T03:00:00.000Z"


def _run(**fields: Any) -> Run:
    return Run.from_document(
        {
            "run_id": RUN,
            "model": "digits",
            "status": "running",
            "created_at": STAMP,
            "updated_at": STAMP,
            "events": [],
            "manifest": MANIFEST.raw,
            **fields,
        }
    )


def _message(attributes: dict[str, str], data: Any) -> PubSubMessage:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return PubSubMessage(
        message_id="m1", publish_time=datetime(2030, 1, 1, tzinfo=UTC), attributes=attributes, data=raw
    )


# --- fetch_data ----------------------------------------------------------------------------------------------


def test_a_scheduler_request_maps_to_the_latest_slot_of_the_manifest_cron() -> None:
    request = Event.new(
        events.RUN_REQUESTED,
        "",
        {"model": "digits", "trigger": "schedule"},
        source="//scheduler",
        time=datetime(2030, 1, 1, 3, 0, 7, tzinfo=UTC),
    )
    assert str(fetch.run_for(request, RunRequested.of(request), MANIFEST)) == RUN


def test_a_request_naming_another_slot_is_refused_with_both_ids() -> None:
    request = Event.new(
        events.RUN_REQUESTED,
        "digits-20300101t040000z",
        {"model": "digits", "scheduled_time": "2030-01-01T03:00:00Z"},
        source="//test",
        time=datetime(2030, 1, 1, 3, 0, 7, tzinfo=UTC),
    )
    with pytest.raises(InvalidEvent, match="wrong run") as refused:
        fetch.run_for(request, RunRequested.of(request), MANIFEST)
    assert RUN in refused.value.problems[0] and "digits-20300101t040000z" in refused.value.problems[0]


def test_a_snapshot_becomes_data_fetched_and_the_run_dataset() -> None:
    dataset = Dataset(uri="gs://d/datasets/digits/x/", sha256="a" * 64, rows=10, bytes=99, files=1)
    outcome = fetch.decide(RunRequested(model="digits", scheduled_time=None, trigger="manual"), dataset)
    assert outcome.type == events.DATA_FETCHED and outcome.record == {
        "dataset": dataset.to_dict(),
        "cache.enabled": True,
    }


# --- training ------------------------------------------------------------------------------------------------


def test_a_refused_job_fails_the_run_with_vertex_reason() -> None:
    dataset = Dataset(uri="gs://d/x/", sha256="a" * 64, rows=1, bytes=1, files=1)
    outcome = training.submitted(RUN, "gs://a/runs/r/model/", dataset, {"job": "", "refused": "bad image"}, "digits")
    assert outcome.type == events.TRAINING_FAILED and outcome.error == "bad image"
    accepted = training.submitted(RUN, "gs://a/runs/r/model/", dataset, {"job": "jobs/1", "refused": ""}, "digits")
    assert accepted.type == events.TRAINING_SUBMITTED and accepted.record["training.active"] is True


def test_a_running_job_is_recorded_only_when_its_state_changes() -> None:
    run = _run(training={"job": "jobs/1", "state": "JOB_STATE_RUNNING", "active": True})
    assert training.finished(run, "JOB_STATE_RUNNING", None, "").record == {}
    moved = training.finished(
        _run(training={"job": "jobs/1", "state": "JOB_STATE_QUEUED", "active": True}), "JOB_STATE_RUNNING", None, ""
    )
    assert moved.emit is None and moved.record == {"training.state": "JOB_STATE_RUNNING"}


def test_a_finished_job_completes_with_its_model_or_fails_naming_why() -> None:
    run = _run(training={"job": "jobs/1", "state": "JOB_STATE_RUNNING", "active": True})
    done = training.finished(run, "JOB_STATE_SUCCEEDED", MODEL, "")
    assert done.type == events.TRAINING_COMPLETED and done.data["model_artifact"] == MODEL.to_dict()
    no_model = training.finished(run, "JOB_STATE_SUCCEEDED", None, "found nothing")
    assert no_model.type == events.TRAINING_FAILED and "found nothing" in str(no_model.error)
    crashed = training.finished(run, "JOB_STATE_FAILED", None, "exit 1")
    assert crashed.type == events.TRAINING_FAILED and crashed.record["training.active"] is False


def test_the_trainer_must_leave_exactly_one_model() -> None:
    from cd4ml.gcs import GcsPath

    prefix = GcsPath("a", f"runs/{RUN}/model/")
    assert training.the_model(prefix, [prefix.name + "model.joblib", prefix.name + "metrics.json"]).endswith(
        "model.joblib"
    )
    with pytest.raises(PermanentError, match="exactly one"):
        training.the_model(prefix, [prefix.name + "model.a", prefix.name + "model.b"])


def test_a_stale_run_names_the_last_event_it_saw() -> None:
    run = _run(events=[{"id": "1", "type": events.DATA_FETCHED, "time": "2030-01-01T03:00:01.000Z"}])
    assert "after cd4ml.data.fetched.v1 at 2030-01-01T03:00:01.000Z" in training.stale_reason(run, 7200)


# --- evaluate ------------------------------------------------------------------------------------------------


def _metrics(accuracy: float, sha: str = MODEL.sha256) -> str:
    return json.dumps({"metrics": {"accuracy": accuracy}, "model_sha256": sha})


def test_good_metrics_of_this_model_pass() -> None:
    outcome = evaluation.decide("digits", MODEL, _metrics(0.97), MANIFEST.evaluation, None)
    assert outcome.type == events.EVALUATION_PASSED and outcome.record["evaluation"]["passed"] is True


@pytest.mark.parametrize(
    ("text", "champion", "reason"),
    [
        (None, None, "wrote no metrics.json"),
        ("not json", None, "is not {"),
        (_metrics(0.97, sha="c" * 64), None, "describes model " + "c" * 64),
        (_metrics(0.5), None, "below the threshold"),
        (
            _metrics(0.91),
            {"run_id": "digits-20291231t030000z", "metrics": {"accuracy": 0.99}},
            "regresses against champion",
        ),
    ],
)
def test_bad_or_unbound_metrics_fail_naming_why(text: str | None, champion: dict[str, Any] | None, reason: str) -> None:
    outcome = evaluation.decide("digits", MODEL, text, MANIFEST.evaluation, champion)
    assert outcome.type == events.EVALUATION_FAILED and reason in str(outcome.error)


# --- delivery ------------------------------------------------------------------------------------------------


def _build(status: str, **build: Any) -> PubSubMessage:
    return _message(
        {"buildId": "b1", "status": status},
        {"id": "b1", "status": status, "tags": [f"cd4ml-run-{RUN}"], "logUrl": "https://log", **build},
    )


def test_a_refused_build_fails_the_image_and_a_submitted_one_is_recorded() -> None:
    refused = delivery.build_submitted("digits", {"refused": "model changed"}, "t")
    assert refused.type == events.IMAGE_FAILED and refused.data["status"] == "MODEL_CHANGED"
    submitted = delivery.build_submitted("digits", {"build_id": "b1", "context": "gs://c"}, "t")
    assert submitted.emit is None and submitted.record["image.build_id"] == "b1"


def test_build_success_carries_the_digest_of_the_built_image() -> None:
    image = f"{REGISTRY}/digits:{RUN}"
    notice = delivery.BuildNotice.of(
        _build("SUCCESS", images=[image], results={"images": [{"name": image, "digest": "sha256:" + "d" * 64}]})
    )
    outcome = delivery.build_reported(notice, _run())
    assert outcome.type == events.IMAGE_BUILT and outcome.data["digest"] == "sha256:" + "d" * 64


def test_build_failure_names_cloud_build_detail_and_log() -> None:
    notice = delivery.BuildNotice.of(_build("FAILURE", failureInfo={"detail": "step 0 exited 1"}))
    outcome = delivery.build_reported(notice, _run())
    assert outcome.type == events.IMAGE_FAILED
    assert "step 0 exited 1" in str(outcome.error) and "https://log" in str(outcome.error)


def test_progress_after_the_build_ended_changes_nothing() -> None:
    late = delivery.build_reported(delivery.BuildNotice.of(_build("QUEUED")), _run(image={"status": "SUCCESS"}))
    assert late.emit is None and late.record == {}
    progress = delivery.build_reported(delivery.BuildNotice.of(_build("WORKING", startTime="t0")), _run())
    assert progress.emit is None and progress.record["image.progress.WORKING"] == "t0"


@pytest.mark.parametrize(
    ("attributes", "data", "reason"),
    [
        ({"buildId": "b1", "status": "SUCCESS"}, b"\xff", "not the Build as JSON"),
        ({"status": "SUCCESS"}, {"id": "b1"}, "not a Cloud Build notification"),
        ({"buildId": "b1", "status": "SUCCESS"}, {"tags": ["cd4ml-run-../../x"]}, "names no run id"),
    ],
)
def test_malformed_build_messages_are_permanent_errors(attributes: dict[str, str], data: Any, reason: str) -> None:
    with pytest.raises(PermanentError, match=reason):
        delivery.BuildNotice.of(_message(attributes, data))


def test_only_a_push_of_the_runs_own_image_becomes_image_pushed() -> None:
    digest = "sha256:" + "e" * 64
    mine = delivery.PushNotice(
        action="INSERT", digest_ref=f"{REGISTRY}/digits@{digest}", tag=f"{REGISTRY}/digits:{RUN}"
    )
    assert mine.run_id(REGISTRY) == RUN
    outcome = delivery.pushed(mine, _run(), REGISTRY)
    assert outcome.type == events.IMAGE_PUSHED and outcome.data["reference"] == f"{REGISTRY}/digits@{digest}"
    other_repo = delivery.PushNotice(
        action="INSERT", digest_ref=f"{REGISTRY}/other@{digest}", tag=f"{REGISTRY}/other:{RUN}"
    )
    assert delivery.pushed(other_repo, _run(), REGISTRY).emit is None
    assert delivery.PushNotice(action="DELETE", digest_ref="", tag=f"{REGISTRY}/digits:{RUN}").run_id(REGISTRY) is None
    assert (
        delivery.PushNotice(action="INSERT", digest_ref=f"x@{digest}", tag="elsewhere/digits:1").run_id(REGISTRY)
        is None
    )


T0 = datetime(2030, 1, 1, 3, 0, tzinfo=UTC)


def test_the_canary_is_triggered_only_with_a_confirmed_execution_and_followed_until_its_deadline() -> None:
    started = delivery.canary_started(
        "digits", "digits", {"event_id": "e", "execution_id": "x", "pipeline": "p"}, T0, 30
    )
    assert started.type == events.CANARY_TRIGGERED and started.record["canary"]["execution_id"] == "x"
    assert started.record["canary"]["active"] is True
    assert started.record["canary"]["deadline"] == "2030-01-01T03:30:00.000Z"
    failed = delivery.canary_started(
        "digits", "digits", {"event_id": "e", "execution_id": "", "reason": "no pipeline"}, T0, 30
    )
    assert failed.type == events.CANARY_FAILED and failed.error == "no pipeline"


# --- watch_canary and promote ----------------------------------------------------------------------------------

CHAMPION = {"run_id": "digits-20291231t030000z", "digest": "sha256:" + "1" * 64}


def _following(**canary: Any) -> Run:
    return _run(
        canary={
            "event_id": "e",
            "execution_id": "x",
            "application": "digits",
            "pipeline": "digits-canary",
            "active": True,
            "triggered_at": "2030-01-01T03:00:00.000Z",
            "deadline": "2030-01-01T03:30:00.000Z",
            **canary,
        },
        image={
            "status": "SUCCESS",
            "reference": f"{REGISTRY}/digits@sha256:{'2' * 64}",
            "digest": "sha256:" + "2" * 64,
        },
    )


def _execution(status: str, *stages: tuple[str, str]) -> dict[str, Any]:
    return {"id": "x", "status": status, "stages": [{"name": n, "status": s} for n, s in stages]}


def test_a_succeeded_execution_is_the_canary_verdict() -> None:
    outcome = canary.verdict(_following(), _execution("SUCCEEDED", ("Deploy canary", "SUCCEEDED")), T0, CHAMPION)
    assert outcome.type == events.CANARY_SUCCEEDED
    assert outcome.record["canary.verdict"] == "succeeded" and outcome.record["canary.active"] is False


@pytest.mark.parametrize(
    ("status", "stage"),
    [("TERMINAL", "Canary analysis"), ("CANCELED", "Deploy canary"), ("STOPPED", "Canary analysis")],
)
def test_a_failed_execution_names_its_stage_and_what_a_rollback_needs(status: str, stage: str) -> None:
    execution = _execution(
        status,
        ("Deploy canary", "SUCCEEDED" if stage != "Deploy canary" else status),
        ("Canary analysis", status if stage == "Canary analysis" else "NOT_STARTED"),
    )
    outcome = canary.verdict(_following(), execution, T0, CHAMPION)
    assert outcome.type == events.CANARY_FAILED
    assert outcome.data["stage"] == stage and outcome.data["status"] == status
    assert f"ended {status} at stage {stage!r}" in str(outcome.error)
    assert outcome.data["previous_digest"] == CHAMPION["digest"]


def test_a_running_execution_waits_and_fails_at_its_deadline() -> None:
    running = _execution("RUNNING", ("Deploy canary", "RUNNING"))
    waiting = canary.verdict(_following(), running, datetime(2030, 1, 1, 3, 29, tzinfo=UTC), None)
    assert waiting.emit is None and waiting.record == {"canary.status": "RUNNING"}
    late = canary.verdict(_following(), running, datetime(2030, 1, 1, 3, 30, tzinfo=UTC), None)
    assert late.type == events.CANARY_FAILED and late.data["status"] == "DEADLINE"
    assert "deadline 2030-01-01T03:30:00.000Z" in str(late.error)
    unreadable = canary.verdict(_following(), None, datetime(2030, 1, 1, 3, 31, tzinfo=UTC), None)
    assert unreadable.type == events.CANARY_FAILED  # Gate down does not hold the deadline off


def test_promotion_points_the_alias_at_the_image_and_keeps_the_previous_champion() -> None:
    outcome = canary.promotion(_following(), "champion", CHAMPION, "2030-01-01T03:10:00.000Z")
    assert outcome.type == events.MODEL_PROMOTED
    assert outcome.data["digest"] == "sha256:" + "2" * 64 and outcome.data["alias"] == "champion"
    assert outcome.record["promotion"]["previous_run_id"] == CHAMPION["run_id"]
    assert outcome.record["promotion"]["previous_digest"] == CHAMPION["digest"]
    first = canary.promotion(_following(), "champion", None, "t")
    assert first.data["previous_run_id"] == "" and first.data["previous_digest"] == ""


@pytest.mark.parametrize("scheduled", ["9998-12-31T03:00:00Z", "2029-11-01T03:00:00Z", "2030-01-03T03:00:00Z"])
def test_a_request_outside_the_window_is_refused_naming_it(scheduled: str) -> None:
    request = Event.new(
        events.RUN_REQUESTED,
        "",
        {"model": "digits", "scheduled_time": scheduled},
        source="//test",
        time=datetime(2030, 1, 1, 3, 0, 7, tzinfo=UTC),
    )
    with pytest.raises(InvalidEvent, match="outside the accepted window") as refused:
        fetch.run_for(request, RunRequested.of(request), MANIFEST)
    assert "31 days before and 24 hours after" in refused.value.problems[0]
