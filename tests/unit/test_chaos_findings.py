"""What the chaos session (``nox -s chaos``) found, kept as fast tests: an outage is retried, never a verdict;
Pub/Sub's delivery attempt is read; the local fault switches are inert unless the chaos session sets them; a
promotion redelivered after a crash asks the registry before moving the alias again."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cd4ml_models import folder as models
from local_emulator.common import faults

from cd4ml import events, spinnaker
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, now
from cd4ml.stages import canary
from tests.stagekit import Kit


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
    faults.plan_crash(tmp_path, "vertex.create", "run-1", "submit_training")  # no caller: nothing to kill
    faults.effect_done("vertex.create", ["other", "run-1"])
    faults.effect_done("vertex.create", ["run-1"])
    assert faults.fired(tmp_path) == ["vertex.create run-1 submit_training (caller not found)"]


class _Registry(ThreadingHTTPServer):
    """The manifest API of a registry holding one image: HEAD/GET by digest or tag, PUT of a tag (counted)."""

    def __init__(self, digest: str) -> None:
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.digest = digest
        self.tags: dict[str, str] = {}
        self.puts: list[str] = []
        self.down = False


class _RegistryHandler(BaseHTTPRequestHandler):
    server: _Registry

    def _manifest(self, body: bool) -> None:
        if self.server.down:  # as the chaos session's registry front answers during an outage
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        reference = self.path.rsplit("/manifests/", 1)[1]
        digest = reference if reference.startswith("sha256:") else self.server.tags.get(reference)
        if digest is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        content = b'{"schemaVersion": 2}'
        self.send_response(200)
        self.send_header("Docker-Content-Digest", digest)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)

    def do_HEAD(self) -> None:
        self._manifest(body=False)

    def do_GET(self) -> None:
        self._manifest(body=True)

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        tag = self.path.rsplit("/manifests/", 1)[1]
        self.server.tags[tag] = self.server.digest
        self.server.puts.append(tag)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.mark.parametrize(
    ("moved_before_the_crash", "newer_since"), [(True, None), (False, None), (True, "2030-01-01T03:11:00.000Z")]
)
def test_a_promotion_redelivered_after_a_crash_moves_the_alias_once(
    moved_before_the_crash: bool, newer_since: str | None
) -> None:
    # Found by the chaos session's crash after the alias PUT, before its record: the redelivery moved it again.
    # With ``newer_since``, another run of the model was promoted after the crashed one had claimed its move (the
    # storm: 51 runs of one model): the redelivery saw the alias elsewhere and moved it back to its older image.
    digest = "sha256:" + "2" * 64
    newer = "sha256:" + "3" * 64
    registry = _Registry(digest)
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    if moved_before_the_crash:
        registry.tags["champion"] = newer if newer_since else digest
    champion = {"run_id": "digits-20300101t040000z", "digest": newer, "since": newer_since} if newer_since else None
    host = f"127.0.0.1:{registry.server_address[1]}"
    manifest = models.read(Path(__file__).resolve().parents[2] / "examples" / "digits")
    kit = Kit("promote", registry=f"{host}/cd4ml", registry_api=f"http://{host}")
    kit.seed(
        "digits-20300101t030000z",
        manifest=manifest.raw,
        model_artifact={"uri": "gs://a/m.joblib", "sha256": "a" * 64},
        evaluation={"passed": True, "metrics": {"accuracy": 0.9}, "gate": {}},
        image={"build_id": "b1", "status": "SUCCESS", "reference": f"{host}/cd4ml/digits@{digest}", "digest": digest},
        canary={"execution_id": "x", "verdict": "succeeded"},
    )
    # The claim a crashed delivery left: its lease is over, so ``once`` asks ``recover`` before acting.
    claim = {"state": "claimed", "claimed_at": "2030-01-01T03:10:00.000Z", "lease_until": "2000-01-01T00:00:00.000Z"}
    assert kit.ledger.store.create("runs/digits-20300101t030000z/effects/promotion", {**claim, "holder": "dead"})
    if champion:
        kit.ledger.store.create("models/digits", {"champion": champion})
    succeeded = Event.new(
        events.CANARY_SUCCEEDED, "digits-20300101t030000z", {"model": "digits", "execution_id": "x"}, source="//test"
    )
    try:
        kit.deliver(canary.promote, succeeded)
    finally:
        registry.shutdown()
        registry.server_close()
    concluded = [e for e in kit.bus.published]
    assert registry.puts == ([] if moved_before_the_crash else ["champion"])
    assert registry.tags["champion"] == (newer if newer_since else digest)
    [outcome] = concluded
    assert outcome.type == events.MODEL_PROMOTED and outcome.data["digest"] == digest
    if newer_since:
        assert outcome.data["superseded_by"] == "digits-20300101t040000z"
        assert events.data_problems(events.MODEL_PROMOTED, events.plain(outcome.data)) == []


def test_a_registry_that_is_down_is_retried_and_named() -> None:
    # Found by the chaos session: a HEAD answered 503 has no body, so the run's last error said only "HTTP 503".
    from cd4ml import registry as docker_registry

    server = _Registry("sha256:" + "2" * 64)
    server.down = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(RetryableError, match="HTTP 503 Service Unavailable"):
            docker_registry.RegistryClient().digest(
                docker_registry.Repository.of(f"{host}/cd4ml/digits", f"http://{host}"), "champion"
            )
    finally:
        server.shutdown()
        server.server_close()


def test_a_busy_claim_never_gives_the_run_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session: five "being carried out by another delivery" answers on one subscription ended a
    # run failed while the claim's holder was still at work.
    from cd4ml import runtime
    from cd4ml.errors import Busy

    gave_up: list[Exception] = []
    ctx = SimpleNamespace(
        observer=False, last_delivery=lambda message, error: True, give_up=lambda m, e: gave_up.append(e)
    )
    monkeypatch.setattr(runtime, "context", lambda: ctx)
    body, attributes = Event.new(
        events.CANARY_SUCCEEDED, "digits-20300101t030000z", {"model": "digits", "execution_id": "x"}, source="//t"
    ).to_message()
    import base64

    push = {"message": {"data": base64.b64encode(body).decode(), "messageId": "1", "attributes": attributes}}
    cloud_event = SimpleNamespace(data=push)

    def busy(message: PubSubMessage, ctx: Any) -> None:
        raise Busy("effect alias-move of run digits-20300101t030000z is being carried out by another delivery")

    with pytest.raises(Busy):
        runtime.dispatch(cloud_event, busy)  # type: ignore[arg-type]
    assert gave_up == []

    def down(message: PubSubMessage, ctx: Any) -> None:
        raise RetryableError("registry unavailable")

    runtime.dispatch(cloud_event, down)  # type: ignore[arg-type]
    assert [str(e) for e in gave_up] == ["registry unavailable"]


def _dead_letter(subscription: str, **extra: str) -> PubSubMessage:
    attributes = {
        "ce-id": "e1",
        "ce-type": events.DATA_FETCHED,
        "ce-subject": "digits-20300101t030000z",
        "CloudPubSubDeadLetterSourceSubscription": "projects/p/subscriptions/cd4ml-submit-training",
        "CloudPubSubDeadLetterSourceDeliveryCount": "5",
        **extra,
    }
    return PubSubMessage(
        message_id="m9", publish_time=now(), attributes=attributes, data=b"{}", subscription=subscription
    )


def test_the_dead_letters_source_stage_is_known_from_either_subscription() -> None:
    from cd4ml.stages.dead_letters import source_stage

    ours = _dead_letter("projects/p/subscriptions/cd4ml-on-dead-letter-trigger-canary-dead-letter")
    assert source_stage(ours) == "trigger_canary"
    twin = _dead_letter("", CloudPubSubDeadLetterSourceSubscription="projects/p/subscriptions/cd4ml-promote-twin2")
    assert source_stage(twin) == "promote"


def test_picked_ports_avoid_the_ephemeral_range_and_are_never_picked_twice() -> None:
    """CI failed at start-up when a port picked for a stand-in was taken, before the stand-in bound it, by one of
    the thousands of outgoing connections (ephemeral ports) or by another pick: picks now come from below the
    kernel's ephemeral range and are reserved machine-wide for a while."""
    from local_emulator.common import processes

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    picks = [processes.free_port() for _ in range(200)]
    assert len(set(picks)) == len(picks)
    assert all(processes._LOWEST <= p < low for p in picks)
    with socket.socket() as s:  # a picked port can be bound by the caller
        s.bind(("127.0.0.1", picks[0]))


def test_a_body_that_is_not_json_text_gets_400_naming_the_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chaos session posted bytes that are not JSON text straight to a function: functions-framework crashed
    (500, which Pub/Sub and callers read as "retry") where every other unreadable body gets 400."""
    from functions_framework import create_app

    monkeypatch.setenv("CD4ML_STAGE", "evaluate")
    main = Path(__file__).resolve().parents[2] / "functions" / "main.py"
    client = create_app("evaluate", str(main), "cloudevent").test_client()  # type: ignore[no-untyped-call]
    answer = client.post("/projects/p/topics/t", data=b"\x00\x01garbage", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert "not JSON text" in answer.get_data(as_text=True)
    not_json = client.post("/projects/p/topics/t", data=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400  # as before


def test_the_push_relay_backs_off_as_the_retry_policy_says() -> None:
    """Pub/Sub's retry policy: exponential backoff from the minimum, capped at the maximum (the emulator's own push
    retried after 1 s, then ~15-25 s, and parked messages for good once several failed together)."""
    from local_emulator.pubsub import push as pubsub_push

    route = pubsub_push.Route("projects/p/subscriptions/s", "http://x", 10, 600, 600)
    assert [pubsub_push.backoff_seconds(route, n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 320, 600, 600]


def test_what_a_stage_ignores_is_logged_with_the_message_it_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    """The chaos verdict matched a rightly-ignored input by its words alone: two inputs ignored with the same words
    both passed on one log line. Every INFO line written while a message is handled names the message."""
    from cd4ml import runtime

    ctx = runtime.Context.__new__(runtime.Context)
    ctx.__dict__.update(settings=SimpleNamespace(stage="on_push"), log=_ListLog())
    token = runtime._HANDLING.set("4242")
    try:
        ctx.info("registry DELETE of r/x:y is not a push of a cd4ml run's image; ignored")
    finally:
        runtime._HANDLING.reset(token)
    ctx.info("outside a delivery")
    first, second = ctx.log.records  # type: ignore[attr-defined]
    assert first["details"]["message_id"] == "4242"
    assert "message_id" not in second["details"]


class _ListLog:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def info(self, message: str, extra: dict[str, Any]) -> None:
        self.records.append({"message": message, **extra})
