"""The Spinnaker Gate test double: Echo's webhook matching, Gate's answers, Orca's execution search."""

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
from local_emulator import processes
from local_emulator.gate import (
    TEST_DOUBLE_HEADER,
    ConfigError,
    GateState,
    lookup,
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
                "payloadConstraints": {"secret": f"^{KEY}$", "model": "dig", "image.registry": r"^127\.0\.0\.1:\d+$"},
            },
        },
        {
            "application": "iris",
            "name": "canary",
            "triggers": [
                {"type": "webhook", "source": "cd4ml", "payloadConstraints": {"secret": f"^{KEY}$", "model": "^iris$"}}
            ],
        },
        {
            "application": "digits",
            "name": "retired",
            "disabled": True,
            "triggers": [{"type": "webhook", "source": "cd4ml"}],
        },
        {
            "application": "digits",
            "name": "other-source",
            "triggers": [{"type": "webhook", "source": "elsewhere"}, {"type": "git", "source": "cd4ml"}],
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
    assert trigger["parameters"] == {
        "stage": "canary",
        "percent": "10",
        "run_id": "digits-20260101T0000",
        "accuracy": "0.97",
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
            {"name": "x", "trigger": {"type": "webhook", "source": "s", "payloadConstraints": {"k": "("}}},
            {"application": "a", "name": "y", "triggers": [{"type": "webhook"}]},
        ]
    }
    with pytest.raises(ConfigError) as raised:
        parse_config(bad)
    message = str(raised.value)
    assert "`application` is required" in message and "invalid regex" in message and "`source` is required" in message


def test_list_constraint_matches_any_and_paths_reach_nested_values() -> None:
    config = {
        "pipelines": [
            {
                "application": "a",
                "name": "p",
                "trigger": {
                    "type": "webhook",
                    "source": "s",
                    "payloadConstraints": {"env": ["^prod$", "^canary$"], "$.meta.tags[1]": "^b$"},
                },
            }
        ]
    }
    pipeline = parse_config(config)[0]
    trigger = pipeline.triggers[0]
    assert trigger.matches("s", {"env": "canary", "meta": {"tags": ["a", "b"]}})
    assert not trigger.matches("s", {"env": "dev", "meta": {"tags": ["a", "b"]}})
    assert lookup({"a.b": 1, "a": {"b": 2}}, "a.b") == (True, 1)  # a literal top-level key wins, as in Echo


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


def test_http_refuses_what_echo_cannot_read(gate_url: str) -> None:
    assert _request(f"{gate_url}/webhooks/webhook/cd4ml", b"not json")[0] == 400
    assert _request(f"{gate_url}/webhooks/webhook/cd4ml", json.dumps(_payload(artifacts={"x": 1})).encode())[0] == 400
    assert _request(f"{gate_url}/nothing/here")[0] == 404
    code, _, health = _request(f"{gate_url}/health")
    assert code == 200 and health["status"] == "UP" and health["testDouble"] is True


def test_cli_serves_a_yaml_config_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    port = processes.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_emulator.gate",
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
        _, _, found = _request(
            f"http://127.0.0.1:{port}/applications/digits/executions/search?eventId={body['eventId']}"
        )
        assert len(found) == 1
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
