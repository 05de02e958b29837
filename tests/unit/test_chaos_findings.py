"""What the chaos session (``nox -s chaos``) found, kept as fast tests: an outage is retried, never a verdict;
Pub/Sub's delivery attempt is read; the local fault switches are inert unless the chaos session sets them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from local_emulator import faults

from cd4ml import spinnaker
from cd4ml.errors import RetryableError
from cd4ml.events import PubSubMessage


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_gate_that_is_down_is_retried_not_recorded_as_a_failed_canary(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session: a 20 s Gate outage ended runs canary.failed; it must be redelivered instead.
    monkeypatch.setattr(spinnaker, "BACKOFF_SECONDS", 0.0)
    gate = spinnaker.GateClient(f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(RetryableError, match="unreachable"):
        gate.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k")


def test_not_knowing_whether_an_execution_started_is_not_none(monkeypatch: pytest.MonkeyPatch) -> None:
    # Acting on "none found" while Gate is unreachable could start a second execution.
    monkeypatch.setattr(spinnaker, "BACKOFF_SECONDS", 0.0)
    gate = spinnaker.GateClient(f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(RetryableError):
        gate.find_execution("digits", "digits-20260101t000000z")


def test_the_push_bodys_delivery_attempt_is_read() -> None:
    # https://cloud.google.com/pubsub/docs/push#receive_push: deliveryAttempt is set when a dead-letter policy is.
    body = {
        "message": {"data": "", "messageId": "1", "attributes": {"a": "b"}},
        "subscription": "s",
        "deliveryAttempt": 5,
    }
    assert PubSubMessage.from_push(body).delivery_attempt == 5
    assert PubSubMessage.from_push({**body, "deliveryAttempt": "x"}).delivery_attempt == 0
    del body["deliveryAttempt"]
    assert PubSubMessage.from_push(body).delivery_attempt == 0


def test_fault_switches_do_nothing_outside_the_chaos_session(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(faults.CHAOS_DIR_ENV, raising=False)
    faults.set_down(tmp_path, "vertex", True)
    assert not faults.is_down("vertex")
    monkeypatch.setenv(faults.CHAOS_DIR_ENV, str(tmp_path))
    assert faults.is_down("vertex")
    faults.set_down(tmp_path, "vertex", False)
    assert not faults.is_down("vertex")


def test_a_planned_crash_fires_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(faults.CHAOS_DIR_ENV, str(tmp_path))
    faults.plan_crash(tmp_path, "vertex.create", "run-1", "submit_training")  # no pid file: nothing to kill
    faults.effect_done("vertex.create", ["other", "run-1"])
    faults.effect_done("vertex.create", ["run-1"])
    assert faults.fired(tmp_path) == ["vertex.create run-1 submit_training"]
