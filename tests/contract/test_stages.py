"""Every stage through functions-framework: bad input is dead-lettered, valid input does its one job."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from typing import Any

import pytest

from cd4ml import catalog, events
from cd4ml.events import Event, format_time, now
from tests.contract.conftest import Contract

#: Stages fed by cd4ml events (on_dead_letter reads copies of any message, bad ones included, by their attributes).
# Stages fed by cd4ml's own events (not Google's formats, dead letters, or people over HTTP: decide_approval).
CD4ML_STAGES = [s for s in catalog.load().stages if not s.foreign and not s.reads_dead_letters and not s.http]


def push_body(attributes: dict[str, str], data: bytes, message_id: str) -> dict[str, Any]:
    return {
        "message": {
            "attributes": attributes,
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "publishTime": format_time(now()),
        },
        "subscription": "projects/cd4ml-contract/subscriptions/x",
    }


def event_body(event: Event, message_id: str = "") -> dict[str, Any]:
    data, attributes = event.to_message()
    return push_body(attributes, data, message_id or event.id)


def open_run(contract: Contract, run_id: str, **facts: Any) -> None:
    """Open ``run_id`` in the ledger, with ``facts`` (dotted fields) recorded as the stages before would have."""
    _open_run(contract, run_id)
    if facts:
        from cd4ml import runtime

        runtime.context().ledger.note(run_id, facts)


def evaluated(run_id: str, uri: str, sha256: str) -> None:
    """Record what evaluate records for a model that passed: build_image builds only that model."""
    from cd4ml import runtime

    runtime.context().ledger.note(
        run_id,
        {
            "model_artifact": {"uri": uri, "sha256": sha256},
            "evaluation": {"passed": True, "metrics": {"accuracy": 0.97}, "gate": {}, "reasons": []},
        },
    )


def _open_run(contract: Contract, run_id: str) -> None:
    from cd4ml_models import folder as models
    from local_emulator.stack import REPO

    manifest = models.read(REPO / "examples" / "digits")
    start = Event.new(events.RUN_REQUESTED, run_id, {"model": "digits"}, source="//test")
    contract.post("watch_training", push_body({}, b"", "warm-up"), "x")  # builds this process's context
    from cd4ml import runtime

    runtime.context().ledger.open_run(
        run_id, model="digits", scheduled_time=now(), trigger="manual", manifest=manifest.raw, event=start
    )
    contract.pull(catalog.dead_letter_topic("watch_training"), wait=1)


_CASES = [
    ("not_json", "data is not JSON"),
    ("schema_violation", "is a required property"),
    ("unknown_type", "is not a cd4ml event type"),
    ("unknown_run", "which the ledger does not know"),
]


@pytest.mark.parametrize(
    ("stage", "case", "expected"),
    [
        pytest.param(stage, case, expected, id=f"{stage.name}-{case}")
        for stage in CD4ML_STAGES
        for case, expected in _CASES
        # run.requested opens runs and the tick names none: "unknown run" has no meaning for them
        if not (case == "unknown_run" and stage.trigger in (events.RUN_REQUESTED, events.WATCH_TICKED))
    ],
)
def test_bad_input_is_logged_once_and_dead_lettered(
    contract: Contract, caplog: pytest.LogCaptureFixture, stage: catalog.Stage, case: str, expected: str
) -> None:
    attributes = {
        "ce-specversion": "1.0",
        "ce-source": "//test",
        "ce-type": stage.trigger,
        "ce-id": f"{case}-1",
        "content-type": "application/json",
        "ce-subject": "digits-20990101t000000z",
    }
    data = b"{}"
    if case == "not_json":
        data = b"<xml/>"
    elif case == "unknown_type":
        attributes["ce-type"] = "cd4ml.thing.happened.v1"
    elif case == "unknown_run":
        data = json.dumps(_valid_data(stage.trigger)).encode()
        attributes["ce-subject"] = "digits-20980101t000000z"  # no run has this id
    if case == "schema_violation" and stage.trigger == events.WATCH_TICKED:
        data = json.dumps({"unexpected": True}).encode()
        expected = "Additional properties are not allowed"
    with caplog.at_level(logging.ERROR, logger="cd4ml"):
        response = contract.post(stage.name, push_body(attributes, data, f"{stage.name}-{case}"), stage.trigger_topic)
    assert response.status_code == 200
    errors = list({id(r): r for r in caplog.records if r.levelno == logging.ERROR}.values())
    assert len(errors) == 1 and expected in errors[0].getMessage()
    dead = contract.pull(catalog.dead_letter_topic(stage.name))
    assert [m.attributes["cd4ml-original-message-id"] for m in dead] == [f"{stage.name}-{case}"]
    assert dead[0].data == data  # the original message, intact


def _valid_data(type_: str) -> dict[str, Any]:
    sha = "0" * 64
    examples: dict[str, dict[str, Any]] = {
        events.DATA_FETCHED: {
            "model": "digits",
            "dataset": {"uri": "gs://b/d/", "sha256": sha, "rows": 1, "bytes": 1, "files": 1},
        },
        events.TRAINING_COMPLETED: {
            "model": "digits",
            "job": "j",
            "model_artifact": {"uri": "gs://b/m", "sha256": sha},
        },
        events.EVALUATION_PASSED: {
            "model": "digits",
            "metrics": {"accuracy": 1.0},
            "gate": {},
            "model_artifact": {"uri": "gs://b/m", "sha256": sha},
        },
        events.IMAGE_PUSHED: {"model": "digits", "reference": f"r/digits@sha256:{sha}"},
        events.DELIVERY_CLEARED: {
            "model": "digits",
            "metrics": {"accuracy": 1.0},
            "model_artifact": {"uri": "gs://b/m", "sha256": sha},
        },
        events.TRAINING_FAILED: {"model": "digits", "state": "JOB_STATE_FAILED", "error": "boom"},
        events.CANARY_SUCCEEDED: {"model": "digits", "execution_id": "x"},
    }
    return examples[type_]


def cleared_body(run_id: str, model: bytes, message_id: str = "") -> dict[str, Any]:
    """The push body of delivery.cleared for ``run_id``, its model (``model``) uploaded where training leaves it."""
    from cd4ml import runtime

    uri = _put_model(runtime.context().storage, run_id, model)
    evaluated(run_id, uri, hashlib.sha256(model).hexdigest())
    cleared = Event.new(
        events.DELIVERY_CLEARED,
        run_id,
        {
            "model": "digits",
            "metrics": {"accuracy": 0.97},
            "model_artifact": {"uri": uri, "sha256": hashlib.sha256(model).hexdigest()},
        },
        source="//test",
    )
    return event_body(cleared, message_id or f"cleared-{run_id}")


def _put_model(storage: Any, run_id: str, model: bytes) -> str:
    storage.bucket("cd4ml-contract-artifacts").blob(f"runs/{run_id}/model/model.joblib").upload_from_string(model)
    return f"gs://cd4ml-contract-artifacts/runs/{run_id}/model/model.joblib"


def _put(contract: Contract, name: str, data: bytes) -> str:
    from cd4ml import runtime

    runtime.context().storage.bucket("cd4ml-contract-artifacts").blob(name).upload_from_string(data)
    return f"gs://cd4ml-contract-artifacts/{name}"


def _completed(run_id: str, model: bytes) -> Event:
    return Event.new(
        events.TRAINING_COMPLETED,
        run_id,
        {
            "model": "digits",
            "job": "projects/p/locations/l/customJobs/1",
            "model_artifact": {
                "uri": f"gs://cd4ml-contract-artifacts/runs/{run_id}/model/model.joblib",
                "sha256": hashlib.sha256(model).hexdigest(),
            },
        },
        source="//test",
    )


def test_evaluate_passes_a_candidate_above_threshold(contract: Contract) -> None:
    run_id = "digits-20300101t000000z"
    open_run(contract, run_id)
    model = b"a model"
    _put(contract, f"runs/{run_id}/model/model.joblib", model)
    _put(
        contract,
        f"runs/{run_id}/model/metrics.json",
        json.dumps({"metrics": {"accuracy": 0.95}, "model_sha256": hashlib.sha256(model).hexdigest()}).encode(),
    )
    assert (
        contract.post("evaluate", event_body(_completed(run_id, model)), "cd4ml-training-completed-v1").status_code
        == 200
    )
    [passed] = contract.pull("cd4ml-evaluation-passed-v1")
    assert json.loads(passed.data)["metrics"] == {"accuracy": 0.95}
    run = contract.run(run_id)
    assert run is not None and run["evaluation"]["passed"] is True


def test_evaluate_fails_metrics_that_describe_another_model(contract: Contract) -> None:
    run_id = "digits-20300102t000000z"
    open_run(contract, run_id)
    _put(contract, f"runs/{run_id}/model/model.joblib", b"candidate")
    _put(
        contract,
        f"runs/{run_id}/model/metrics.json",
        json.dumps({"metrics": {"accuracy": 0.99}, "model_sha256": "f" * 64}).encode(),
    )
    assert (
        contract.post(
            "evaluate", event_body(_completed(run_id, b"candidate")), "cd4ml-training-completed-v1"
        ).status_code
        == 200
    )
    [failed] = contract.pull("cd4ml-evaluation-failed-v1")
    assert "describes model ffff" in json.loads(failed.data)["reasons"][0]
    run = contract.run(run_id)
    assert run is not None and run["status"] == "failed" and "describes model" in run["error"]["message"]


def test_submit_training_submits_one_job_however_often_delivered(contract: Contract) -> None:
    from cd4ml import runtime

    run_id = "digits-20300103t000000z"
    open_run(contract, run_id)
    fetched = Event.new(events.DATA_FETCHED, run_id, _valid_data(events.DATA_FETCHED), source="//test")
    for attempt in range(3):
        assert (
            contract.post("submit_training", event_body(fetched, f"m{attempt}"), "cd4ml-data-fetched-v1").status_code
            == 200
        )
    jobs = list(
        runtime.context().jobs.list_custom_jobs(
            request={
                "parent": "projects/cd4ml-contract/locations/us-central1",
                "filter": f'labels.cd4ml_run_id="{run_id}"',
            }
        )
    )
    assert len(jobs) == 1
    assert len(contract.pull("cd4ml-training-submitted-v1")) >= 1
    run = contract.run(run_id)
    assert run is not None and run["training"]["job"] == jobs[0].name
    assert [e["type"] for e in run["events"]].count(events.TRAINING_SUBMITTED) == 1


def test_a_bad_message_for_a_live_run_is_noted_and_the_fixed_one_continues_it(contract: Contract) -> None:
    """Issue 13: a corrupted data.fetched is dead-lettered and noted on the run; the corrected one still trains."""
    run_id = "digits-20300110t000000z"
    open_run(contract, run_id)
    good = Event.new(events.DATA_FETCHED, run_id, _valid_data(events.DATA_FETCHED), source="//test")
    data, attributes = good.to_message()
    corrupted = push_body({**attributes, "ce-id": "corrupted"}, b'{"model": "digits", "dataset": {}}', "corrupted")
    assert contract.post("submit_training", corrupted, "cd4ml-data-fetched-v1").status_code == 200
    run = contract.run(run_id)
    assert run is not None and run["status"] == "running"
    assert [r["message_id"] for r in run["rejected_messages"]] == ["corrupted"]
    assert "is a required property" in run["rejected_messages"][0]["reason"]
    [dead] = contract.pull(catalog.dead_letter_topic("submit_training"))
    assert dead.attributes["cd4ml-original-message-id"] == "corrupted"
    assert (
        contract.post("submit_training", push_body(attributes, data, "fixed"), "cd4ml-data-fetched-v1").status_code
        == 200
    )
    [submitted] = contract.pull("cd4ml-training-submitted-v1")
    assert submitted.attributes["ce-subject"] == run_id
    run = contract.run(run_id)
    assert run is not None and run["status"] == "running" and run["training"]["active"] is True


def test_a_message_pub_sub_dead_lettered_ends_its_waiting_run(
    contract: Contract, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_dead_letter through functions-framework: a data.fetched whose last attempt never answered (Pub/Sub's
    dead-letter attributes, no cd4ml-error) marks its run, which the watch tick ends failed at submit_training
    after the grace; a rejected copy marks nothing."""
    run_id = "digits-20970101t000000z"
    open_run(contract, run_id)
    from cd4ml import runtime

    fetched = Event.new(events.DATA_FETCHED, run_id, _valid_data(events.DATA_FETCHED), source="//test", id="fetched-1")
    runtime.context().ledger.record(run_id, fetched)
    data, attributes = fetched.to_message()
    pubsub = {
        "CloudPubSubDeadLetterSourceSubscription": "projects/p/subscriptions/cd4ml-submit-training",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
    }
    topic = catalog.topic_id(catalog.dead_letter_topic("submit_training"))
    rejected = {**attributes, **pubsub, "cd4ml-rejected-by": "submit_training", "cd4ml-error": "bad"}
    assert contract.post("on_dead_letter", push_body(rejected, data, "dl-1"), topic).status_code == 200
    assert (runtime.context().ledger.get(run_id) or {})["status"] == "running"
    assert contract.post("on_dead_letter", push_body({**attributes, **pubsub}, data, "dl-2"), topic).status_code == 200
    record = runtime.context().ledger.get(run_id) or {}
    assert record["status"] == "running" and record["dead_letter"]["pending"] is True
    from cd4ml.stages import dead_letters

    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    contract.post("watch_training", push_body({}, b"", "tick-after-grace"), "x")  # builds watch_training's context
    dead_letters.end_dead_lettered_runs(runtime.context())
    record = runtime.context().ledger.get(run_id) or {}
    assert record["status"] == "failed"
    assert record["error"]["stage"] == "submit_training"
    assert "after 5 delivery attempts on cd4ml-submit-training" in record["error"]["message"]
