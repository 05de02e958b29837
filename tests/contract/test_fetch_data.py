"""fetch_data through functions-framework with golden Pub/Sub push bodies."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from cd4ml import catalog
from tests.contract.conftest import Contract, golden

TOPIC = "cd4ml-run-requested-v1"
DLQ = catalog.dead_letter_topic("fetch_data")


def test_valid_request_opens_the_run_and_emits_data_fetched(contract: Contract) -> None:
    response = contract.post("fetch_data", golden("run_requested_valid"), TOPIC)
    assert response.status_code == 200
    run = contract.run("digits-20260101t030000z")
    assert run is not None and run["status"] == "running"
    assert run["dataset"]["rows"] == 2 and len(run["dataset"]["sha256"]) == 64
    [message] = contract.pull("cd4ml-data-fetched-v1")
    assert message.attributes["ce-type"] == "cd4ml.data.fetched.v1"
    assert message.attributes["ce-subject"] == "digits-20260101t030000z"
    assert json.loads(message.data)["dataset"]["sha256"] == run["dataset"]["sha256"]


def test_redelivery_records_nothing_twice(contract: Contract) -> None:
    for _ in range(2):
        assert contract.post("fetch_data", golden("run_requested_valid"), TOPIC).status_code == 200
    run = contract.run("digits-20260101t030000z")
    assert run is not None
    assert [e["type"] for e in run["events"]] == ["cd4ml.run.requested.v1", "cd4ml.data.fetched.v1"]


def test_scheduler_message_maps_to_the_schedule_slot(contract: Contract) -> None:
    assert contract.post("fetch_data", golden("run_requested_from_scheduler"), TOPIC).status_code == 200
    run = contract.run("digits-20260101t030000z")  # published 03:00:01 → the 03:00 slot, the same run
    assert run is not None and run["trigger"] == "manual"


@pytest.mark.parametrize(
    ("body", "run_id", "expected"),
    [
        ("not_json", "digits-20260103t030000z", ["data is not JSON"]),
        (
            "schema_violation",
            "digits-20260104t030000z",
            ["model: 'Digits Model' does not match", "trigger: 'cron' is not one of", "'extra' was unexpected"],
        ),
        ("unknown_type", "digits-20260105t030000z", ["'cd4ml.run.exploded.v1' is not a cd4ml event type"]),
        ("unknown_model", "nosuchmodel-20260106t030000z", ["unknown model 'nosuchmodel'", "no manifest at gs://"]),
    ],
)
def test_bad_messages_are_logged_once_and_dead_lettered_and_open_no_run(
    contract: Contract, caplog: pytest.LogCaptureFixture, body: str, run_id: str, expected: list[str]
) -> None:
    with caplog.at_level(logging.ERROR, logger="cd4ml"):
        response = contract.post("fetch_data", golden(body), TOPIC)
    assert response.status_code == 200  # acknowledged: never retried forever
    errors = list({id(r): r for r in caplog.records if r.levelno == logging.ERROR}.values())
    assert len(errors) == 1
    for text in expected:
        assert text in errors[0].getMessage()
    assert contract.run(run_id) is None  # a malformed request is not a run: the slot stays free (issue 13)
    dead = contract.pull(DLQ)
    assert [m.attributes["cd4ml-original-message-id"] for m in dead] == [golden(body)["message"]["messageId"]]
    assert dead[0].attributes["cd4ml-rejected-by"] == "fetch_data"


def test_a_message_whose_data_is_not_base64_is_dead_lettered(contract: Contract) -> None:
    body = {
        "message": {"messageId": "1007", "data": "%%% not base64", "publishTime": "2026-01-01T03:00:00Z"},
        "subscription": "projects/cd4ml-contract/subscriptions/cd4ml-fetch-data",
    }
    assert contract.post("fetch_data", body, TOPIC).status_code == 200
    [dead] = contract.pull(DLQ)
    assert "message.data is not base64" in dead.attributes["cd4ml-error"]


def test_a_body_that_is_not_a_push_at_all_is_refused_by_the_framework(contract: Contract) -> None:
    # Not 2xx: Pub/Sub redelivers it up to max_delivery_attempts, then its dead-letter policy takes it.
    assert contract.post("fetch_data", {"hello": "world"}, TOPIC).status_code == 400


def test_a_malformed_request_for_a_slot_does_not_stop_the_real_request_for_it(contract: Contract) -> None:
    """Issue 13: a bad message naming today's scheduled slot must not make Cloud Scheduler's real one a duplicate."""
    bad = golden("run_requested_valid")
    bad["message"]["messageId"] = "bad-1"
    bad["message"]["attributes"] = {
        **bad["message"]["attributes"],
        "ce-subject": "digits-20260201t030000z",
        "ce-id": "bad-1",
        "ce-time": "2026-02-01T03:00:00.500Z",
    }
    bad["message"]["data"] = base64.b64encode(b'{"model": "digits", "trigger": "cron"}').decode()
    assert contract.post("fetch_data", bad, TOPIC).status_code == 200
    assert contract.run("digits-20260201t030000z") is None
    good = golden("run_requested_valid")
    good["message"]["messageId"] = "good-1"
    good["message"]["attributes"] = {
        **good["message"]["attributes"],
        "ce-subject": "digits-20260201t030000z",
        "ce-id": "good-1",
        "ce-time": "2026-02-01T03:00:00.500Z",
    }
    good["message"]["data"] = base64.b64encode(
        json.dumps({"model": "digits", "trigger": "schedule", "scheduled_time": "2026-02-01T03:00:00Z"}).encode()
    ).decode()
    assert contract.post("fetch_data", good, TOPIC).status_code == 200
    run = contract.run("digits-20260201t030000z")
    assert run is not None and run["status"] == "running" and "dataset" in run
    assert [m.attributes["cd4ml-original-message-id"] for m in contract.pull(DLQ)] == ["bad-1"]
    contract.pull("cd4ml-data-fetched-v1")
