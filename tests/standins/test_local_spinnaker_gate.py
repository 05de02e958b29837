"""The Spinnaker Gate test double: Gate's answers, Echo's trigger selection, Orca's execution search.

Echo's matching rules themselves are ported case by case in test_local_spinnaker_gate_echo.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_emulator.common import processes
from local_emulator.spinnaker import (
    TEST_DOUBLE_HEADER,
    ConfigError,
    GateState,
    make_server,
    new_ulid,
    parse_config,
)

KEY = "s3cr3t-key"
CONFIG: dict[str, Any] = {
    "pipelines": [
        {
            "application": "digits",
            "name": "canary",
            "parameterConfig": [{"name": "stage", "default": "canary"}, {"name": "percent", "default": 10}],
            "trigger": {
                "type": "webhook",
                "source": "cd4ml",
                "enabled": True,
                "payloadConstraints": {"secret": f"^{KEY}$", "model": "dig", "image.registry": r"^127\.0\.0\.1:\d+$"},
            },
        },
        {
            "application": "iris",
            "name": "canary",
            "triggers": [
                {
                    "type": "webhook",
                    "source": "cd4ml",
                    "enabled": True,
                    "payloadConstraints": {"secret": f"^{KEY}$", "model": "^iris$"},
                }
            ],
        },
        {
            "application": "digits",
            "name": "retired",
            "disabled": True,
            "triggers": [{"type": "webhook", "source": "cd4ml", "enabled": True}],
        },
        {
            "application": "digits",
            "name": "other-source",
            "triggers": [
                {"type": "webhook", "source": "elsewhere", "enabled": True},
                {"type": "git", "source": "cd4ml", "enabled": True},
            ],
        },
    ]
}


def _payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "secret": KEY,
        "model": "digits",
        "run_id": "digits-20260101T0000",
        "image": {"registry": "127.0.0.1:5000", "reference": "127.0.0.1:5000/cd4ml/digits@sha256:" + "a" * 64},
        "parameters": {"run_id": "digits-20260101T0000", "accuracy": 0.97},
        "artifacts": [
            {
                "type": "docker/image",
                "name": "127.0.0.1:5000/cd4ml/digits",
                "reference": "127.0.0.1:5000/cd4ml/digits@sha256:" + "a" * 64,
            }
        ],
    }
    payload.update(overrides)
    return payload


@pytest.fixture
def state(tmp_path: Path) -> GateState:
    return GateState(parse_config(CONFIG), tmp_path, execution_ms=60_000)


def _search(state: GateState, app: str, **query: str) -> list[dict[str, Any]]:
    return state.search(app, {key: [value] for key, value in query.items()})


def test_right_key_starts_one_execution_with_echo_trigger(state: GateState) -> None:
    webhook = state.receive("cd4ml", _payload())

    [execution] = _search(state, "digits", triggerTypes="webhook", eventId=webhook.event_id)
    assert execution["id"] == webhook.execution_ids[0]
    assert (execution["application"], execution["name"], execution["status"]) == ("digits", "canary", "RUNNING")
    trigger = execution["trigger"]
    assert trigger["type"] == "webhook" and trigger["source"] == "cd4ml" and trigger["eventId"] == webhook.event_id
    # Echo passes the payload's parameters as they are; Orca fills parameterConfig defaults that are missing.
    assert trigger["parameters"] == {
        "stage": "canary",
        "percent": 10,
        "run_id": "digits-20260101T0000",
        "accuracy": 0.97,
    }
    assert trigger["artifacts"][0]["type"] == "docker/image"
    assert trigger["artifacts"][0]["reference"].endswith("@sha256:" + "a" * 64)
    assert trigger["payload"]["run_id"] == "digits-20260101T0000"


def test_wrong_key_is_processed_but_starts_nothing(state: GateState) -> None:
    webhook = state.receive("cd4ml", _payload(secret="guess"))

    assert webhook.execution_ids == ()
    assert _search(state, "*", triggerTypes="webhook", eventId=webhook.event_id) == []
    assert state.webhooks()[-1]["eventId"] == webhook.event_id


def test_key_constraint_is_anchored_but_others_are_substring_searches(state: GateState) -> None:
    assert state.receive("cd4ml", _payload(secret=KEY + "x")).execution_ids == ()
    assert state.receive("cd4ml", _payload(model="my-digits-v2")).execution_ids != ()  # "dig" found inside
    assert state.receive("cd4ml", _payload(model="mnist")).execution_ids == ()


def test_missing_key_or_nested_mismatch_matches_nothing(state: GateState) -> None:
    without_secret = _payload()
    del without_secret["secret"]
    assert state.receive("cd4ml", without_secret).execution_ids == ()
    assert state.receive("cd4ml", _payload(image={"registry": "gcr.io"})).execution_ids == ()


def test_source_disabled_pipelines_and_other_trigger_types_are_respected(state: GateState) -> None:
    assert state.receive("unknown", _payload()).execution_ids == ()
    started = state.receive("elsewhere", {"anything": 1}).execution_ids
    assert [state.execution(i)["name"] for i in started] == ["other-source"]  # type: ignore[index]


def test_application_star_searches_every_application(state: GateState) -> None:
    first = state.receive("cd4ml", _payload())
    second = state.receive("cd4ml", _payload(model="iris"))

    assert [e["application"] for e in _search(state, "*", triggerTypes="webhook")] == ["iris", "digits"]
    assert [e["id"] for e in _search(state, "*", eventId=second.event_id)] == list(second.execution_ids)
    assert _search(state, "iris", eventId=first.event_id) == []
    assert _search(state, "digits", triggerTypes="git") == []


def test_execution_finishes_after_its_duration(tmp_path: Path) -> None:
    quick = GateState(parse_config(CONFIG), tmp_path, execution_ms=50)
    [execution_id] = quick.receive("cd4ml", _payload()).execution_ids
    time.sleep(0.1)
    execution = quick.execution(execution_id)
    assert (
        execution is not None and execution["status"] == "SUCCEEDED" and execution["endTime"] >= execution["startTime"]
    )
    assert _search(quick, "digits", statuses="RUNNING") == []


def test_state_survives_a_restart(tmp_path: Path) -> None:
    webhook = GateState(parse_config(CONFIG), tmp_path, 60_000).receive("cd4ml", _payload())
    again = GateState(parse_config(CONFIG), tmp_path, 60_000)
    assert [e["id"] for e in _search(again, "*", eventId=webhook.event_id)] == list(webhook.execution_ids)


def test_config_errors_are_reported_together() -> None:
    bad = {
        "pipelines": [
            {"name": "x", "trigger": {"type": "webhook", "source": "s", "payloadConstraints": ["k"]}},
            {"application": "a", "triggers": "webhook"},
        ]
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(bad)
    message = str(raised.value)
    assert "`application` is required" in message and "`payloadConstraints` must be a mapping" in message
    assert "`name` is required" in message and "`triggers` must be a list" in message


def test_what_front50_stores_but_echo_never_fires_is_accepted_and_never_fires(tmp_path: Path) -> None:
    """ArtifactMatcher.matches: an invalid regex "will never match any payload"; Trigger.enabled is a Java
    boolean (absent = false); WebhookEventHandler.isValidTrigger wants type exactly "webhook"."""
    config = {
        "pipelines": [
            {"application": "a", "name": "bad-regex", "trigger": {"type": "webhook", "source": "s", "enabled": True,
                                                               "payloadConstraints": {"k": "("}}},
            {"application": "a", "name": "no-enabled", "trigger": {"type": "webhook", "source": "s"}},
            {"application": "a", "name": "type-case", "trigger": {"type": "Webhook", "source": "s", "enabled": True}},
            {"application": "a", "name": "no-source", "trigger": {"type": "webhook", "enabled": True}},
        ]
    }  # fmt: skip
    state = GateState(parse_config(config), tmp_path, 60_000)
    assert state.receive("s", {"k": "("}).execution_ids == ()


def test_a_json_list_constraint_is_one_regex_of_its_java_string() -> None:
    """ArtifactMatcher: `constraints.get(key).toString()`; ["^prod$", "^canary$"] is "[^prod$, ^canary$]",
    a negated character class, not "any of"; `$.meta.tags[1]` is a JsonPath."""
    config = {
        "pipelines": [
            {
                "application": "a",
                "name": "p",
                "trigger": {
                    "type": "webhook",
                    "source": "s",
                    "enabled": True,
                    "payloadConstraints": {"env": ["^prod$", "^canary$"], "$.meta.tags[1]": "^b$"},
                },
            }
        ]
    }
    trigger = parse_config(config)[0].triggers[0]
    assert not trigger.matches("s", {"env": "canary", "meta": {"tags": ["a", "b"]}})  # every char is in the class
    assert trigger.matches("s", {"env": "dev", "meta": {"tags": ["a", "b"]}})  # "v" is not
    assert not trigger.matches("s", {"env": "dev", "meta": {"tags": ["a", "c"]}})


def test_ulids_sort_by_time() -> None:
    assert len(new_ulid(1)) == 26
    assert new_ulid(1_000) < new_ulid(2_000)


@pytest.fixture
def gate_url(state: GateState) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _request(url: str, body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_http_webhook_answers_like_gate_and_search_finds_the_execution(gate_url: str) -> None:
    code, headers, body = _request(f"{gate_url}/webhooks/webhook/cd4ml", json.dumps(_payload()).encode())
    assert code == 200 and body["eventProcessed"] is True and len(body["eventId"]) == 36
    assert headers[TEST_DOUBLE_HEADER[0]] == TEST_DOUBLE_HEADER[1]

    code, _, found = _request(
        f"{gate_url}/applications/*/executions/search?triggerTypes=webhook&eventId={body['eventId']}"
    )
    assert code == 200 and [e["name"] for e in found] == ["canary"]
    code, _, execution = _request(f"{gate_url}/pipelines/{found[0]['id']}")
    assert code == 200 and execution["trigger"]["eventId"] == body["eventId"]


def test_http_wrong_key_still_processed_and_recorded(gate_url: str) -> None:
    code, _, body = _request(f"{gate_url}/webhooks/webhook/cd4ml", json.dumps(_payload(secret="nope")).encode())
    assert code == 200 and body["eventProcessed"] is True
    _, _, found = _request(
        f"{gate_url}/applications/digits/executions/search?triggerTypes=webhook&eventId={body['eventId']}"
    )
    assert found == []
    _, _, recorded = _request(f"{gate_url}/webhooks/recorded")
    assert recorded[-1]["eventId"] == body["eventId"] and recorded[-1]["payload"]["secret"] == "nope"


def test_http_refuses_what_gate_cannot_read(gate_url: str) -> None:
    """Gate's WebhookController takes `@RequestBody Map`: bad JSON, a non-object or NaN is a 400."""
    for body in (b"not json", b"[1]", b"null", b'{"a": NaN}'):
        assert _request(f"{gate_url}/webhooks/webhook/cd4ml", body)[0] == 400
    assert _request(f"{gate_url}/nothing/here")[0] == 404
    code, _, health = _request(f"{gate_url}/health")
    assert code == 200 and health["status"] == "UP" and health["testDouble"] is True


def test_http_content_echo_cannot_convert_is_processed_but_starts_nothing(gate_url: str) -> None:
    """WebhooksController answers before the TriggerMonitor converts the content (EventPropagator runs
    listeners asynchronously): `artifacts` that are not a List<Artifact> fail there, silently."""
    code, _, body = _request(f"{gate_url}/webhooks/webhook/cd4ml", json.dumps(_payload(artifacts={"x": 1})).encode())
    assert code == 200 and body["eventProcessed"] is True
    _, _, recorded = _request(f"{gate_url}/webhooks/recorded")
    assert recorded[-1]["executionIds"] == [] and "artifacts" in recorded[-1]["dropped"]


def test_http_path_type_is_compared_ignoring_case_and_other_types_start_nothing(gate_url: str) -> None:
    """WebhookEventHandler.matchTriggerFor: trigger.getType().equalsIgnoreCase(event type); `manual` is not
    handled; `git` goes to Echo's SCM handlers (unknown source: IllegalArgumentException, 400)."""

    def started(webhook_type: str) -> list[Any]:
        code, _, body = _request(f"{gate_url}/webhooks/{webhook_type}/cd4ml", json.dumps(_payload()).encode())
        assert code == 200 and body["eventProcessed"] is True
        query = f"triggerTypes=webhook&eventId={body['eventId']}"
        return list(_request(f"{gate_url}/applications/*/executions/search?{query}")[2])

    assert len(started("WEBHOOK")) == 1 and len(started("Webhook")) == 1
    assert started("manual") == [] and started("docker") == [] and started("github") == []
    assert _request(f"{gate_url}/webhooks/git/cd4ml", json.dumps(_payload()).encode())[0] == 400


def test_cli_serves_a_yaml_config_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    port = processes.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_emulator.spinnaker",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
            "--config",
            str(config),
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        processes.wait_until(lambda: processes.port_open(port), what="gate", timeout=10, pid=proc.pid)
        _, _, body = _request(f"http://127.0.0.1:{port}/webhooks/webhook/cd4ml", json.dumps(_payload()).encode())
        search = f"http://127.0.0.1:{port}/applications/digits/executions/search?eventId={body['eventId']}"
        assert _request(search)[2] == []  # Echo starts the pipeline after Gate's answer (--start-delay-seconds 1)
        processes.wait_until(lambda: len(_request(search)[2]) == 1, what="the execution", timeout=5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        logs = [json.loads(line) for line in proc.stderr.read().decode().splitlines()] if proc.stderr else []
        assert {"ready", "webhook processed", "stopped"} <= {entry["message"] for entry in logs}
        assert KEY not in json.dumps(logs)  # the pre-shared key never reaches the logs
        assert (
            json.loads((tmp_path / "state" / "executions.json").read_text())[0]["trigger"]["eventId"] == body["eventId"]
        )
    finally:
        processes.stop(proc.pid)


def _canary_record(status: str, stage: str = "") -> dict[str, Any]:
    from local_emulator.spinnaker.pipelines import DEFAULT_STAGES

    return {
        "id": "x",
        "startTime": 0,
        "_durationMs": 3000,
        "_outcome": {"status": status, "stage": stage},
        "stages": [{"id": f"x-{n}", "name": name} for n, name in enumerate(DEFAULT_STAGES)],
    }


def test_an_execution_runs_its_stages_in_turn_to_success() -> None:
    from local_emulator.spinnaker.orca_execution import render_execution

    early = render_execution(_canary_record("SUCCEEDED"), 1500)
    assert early["status"] == "RUNNING"
    assert [s["status"] for s in early["stages"]] == ["SUCCEEDED", "RUNNING", "NOT_STARTED"]
    done = render_execution(_canary_record("SUCCEEDED"), 3000)
    assert done["status"] == "SUCCEEDED" and {s["status"] for s in done["stages"]} == {"SUCCEEDED"}


@pytest.mark.parametrize("status", ["TERMINAL", "CANCELED", "STOPPED"])
def test_an_execution_can_end_without_success_at_a_chosen_stage(status: str) -> None:
    from local_emulator.spinnaker.orca_execution import render_execution

    ended = render_execution(_canary_record(status, "Canary analysis"), 10_000)
    assert ended["status"] == status and ended["canceled"] is (status == "CANCELED")
    assert [s["status"] for s in ended["stages"]] == ["SUCCEEDED", status, "NOT_STARTED"]


def test_an_execution_told_to_keep_running_never_ends() -> None:
    from local_emulator.spinnaker.orca_execution import render_execution

    forever = render_execution(_canary_record("RUNNING"), 10**9)
    assert forever["status"] == "RUNNING" and forever["endTime"] is None


def test_the_client_finds_a_runs_execution_behind_ten_newer_ones(gate_url: str) -> None:
    """Orca answers 10 executions by default, newest first: a crash after the webhook, found after ten more runs of
    the model had started canaries, must still find the run's execution (the chaos storm's second Gate execution)."""
    from cd4ml import spinnaker

    for n in range(12):
        run_id = f"digits-20260101t0000{n:02d}z"
        _request(f"{gate_url}/webhooks/webhook/cd4ml", json.dumps(_payload(run_id=run_id)).encode())
    gate = spinnaker.GateClient(gate_url)
    found = gate.find_execution("digits", "digits-20260101t000000z")
    assert found is not None and found.execution_id
    code, _, execution = _request(f"{gate_url}/pipelines/{found.execution_id}")
    assert code == 200 and execution["trigger"]["payload"]["run_id"] == "digits-20260101t000000z"
    assert gate.find_execution("digits", "digits-20260101t000099z") is None
