"""What the chaos session (``nox -s chaos``) found, kept as fast tests: an outage is retried, never a verdict;
Pub/Sub's delivery attempt is read; the local fault switches are inert unless the chaos session sets them; a
promotion redelivered after a crash asks the registry before moving the alias again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cd4ml_cli import models
from local_emulator import faults

from cd4ml import events, spinnaker
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, now
from cd4ml.outcome import Outcome
from cd4ml.run import Run
from cd4ml.stages import canary


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


def test_the_worst_moment_kills_the_calling_instance_and_nothing_else() -> None:
    # With several instances per function (concurrency 1, as Cloud Run's), the stand-in must kill the instance
    # that called it: the one owning the caller's end of the connection, and only a functions-framework server.
    import subprocess

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = f"import socket, time; s = socket.create_connection(('127.0.0.1', {port})); time.sleep(60)"
    callers = [
        subprocess.Popen([sys.executable, "-c", code, *argv], start_new_session=True)
        for argv in (["functions_framework", "--target", "promote"], ["not-a-function", "promote"])
    ]
    try:
        peers = [listener.accept()[0].getpeername()[1] for _ in callers]
        by_pid = {faults.owner_of(p, faults.listening_ports()): p for p in peers}
        function, other = (by_pid[c.pid] for c in callers)
        assert not faults.kill_caller(function, "evaluate")  # another stage's instance
        assert not faults.kill_caller(other, "promote")  # not a function instance
        assert faults.kill_caller(function, "promote")
        callers[0].wait(timeout=10)
        time.sleep(0.2)
        assert callers[1].poll() is None
    finally:
        for caller in callers:
            caller.kill()
            caller.wait()
        listener.close()


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


class _ExpiredClaimLedger:
    """A ledger whose promotion claim a crashed delivery left behind: ``once`` asks ``recover`` before acting."""

    def __init__(self, run: Run, champion: dict[str, Any] | None = None) -> None:
        self._run = run
        self._champion = champion

    def run(self, run_id: str) -> Run:
        return self._run

    def champion(self, model: str) -> dict[str, Any] | None:
        return self._champion

    def claim(self, run_id: str, name: str) -> dict[str, Any] | None:
        return {"state": "claimed", "claimed_at": "2030-01-01T03:10:00.000Z", "attempts": 1}

    def model_lock(self, model: str, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def once(
        self, run_id: str, name: str, act: Callable[[], dict[str, Any]], recover: Callable[[], Any]
    ) -> tuple[dict[str, Any], bool]:
        found = recover()
        return (found, False) if found is not None else (act(), True)


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
    run = Run.from_document(
        {
            "run_id": "digits-20300101t030000z",
            "model": "digits",
            "status": "running",
            "created_at": "2030-01-01T03:00:00.000Z",
            "updated_at": "2030-01-01T03:00:00.000Z",
            "events": [],
            "manifest": manifest.raw,
            "image": {"status": "SUCCESS", "reference": f"{host}/cd4ml/digits@{digest}", "digest": digest},
        }
    )
    concluded: list[Outcome] = []
    ctx = SimpleNamespace(
        settings=SimpleNamespace(registry_api=f"http://{host}"),
        ledger=_ExpiredClaimLedger(run, champion),
        conclude=lambda run_id, outcome: concluded.append(outcome),
        info=lambda *args, **kwargs: None,
    )
    body, attributes = Event.new(
        events.CANARY_SUCCEEDED, run.run_id, {"model": "digits", "execution_id": "x"}, source="//test"
    ).to_message()
    message = PubSubMessage(message_id="m1", publish_time=now(), attributes=attributes, data=body)
    try:
        canary.promote(message, ctx)  # type: ignore[arg-type]
    finally:
        registry.shutdown()
        registry.server_close()
    assert registry.puts == ([] if moved_before_the_crash else ["champion"])
    assert registry.tags["champion"] == (newer if newer_since else digest)
    [outcome] = concluded
    assert outcome.type == events.MODEL_PROMOTED and outcome.data["digest"] == digest
    if newer_since:
        assert outcome.data["superseded_by"] == "digits-20300101t040000z"
        assert events.data_problems(events.MODEL_PROMOTED, outcome.data) == []


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


_STUBBORN_SERVER = (
    "import http.server, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[-1])), http.server.BaseHTTPRequestHandler).serve_forever()"
)


def test_an_instance_serves_one_request_at_a_time_and_a_crash_takes_only_its_own(tmp_path: Path) -> None:
    # Found by the chaos session: one multi-threaded instance per function made every crash kill all requests in
    # flight; Cloud Run functions serve one request per instance (default concurrency 1) and start more.
    from local_emulator.supervisor import Service

    service = Service("stage", [sys.executable, "-c", _STUBBORN_SERVER], dict(os.environ), tmp_path / "log", 2)
    first, second = service.acquire(), service.acquire()
    assert first is not None and second is not None and first is not second
    assert service.acquire(timeout=0.5) is None  # both busy, no third instance
    first.kill()
    first.wait(time.monotonic() + 5)
    assert second.alive()
    service.release(first)
    third = service.acquire()
    assert third is not None and third is not first and third.alive()
    assert service.started == 3
    for instance in service.stop_all(signal.SIGKILL):
        instance.wait(time.monotonic() + 5)


def test_the_supervisor_leaves_no_instance_behind(tmp_path: Path) -> None:
    # Found by the chaos session: instances stopped one by one (3 s grace each) outlasted the stack's 10 s for the
    # supervisor, which was SIGKILLed midway and left the rest running. Now all at once; even instances that
    # ignore SIGTERM are gone within the grace period, and a stopped function starts no instance.
    from local_emulator import processes
    from local_emulator.supervisor import Supervisor

    spec = {
        "log_dir": str(tmp_path),
        "functions": {
            f"stage{n}": {"port": processes.free_port(), "argv": [sys.executable, "-c", _STUBBORN_SERVER], "env": {}}
            for n in range(6)
        },
    }
    supervisor = Supervisor(spec, None, 0.0, 0)
    for service in supervisor.services.values():
        service.warm()
    pids = [i.proc.pid for s in supervisor.services.values() for i in s.instances if i.proc is not None]
    assert len(pids) == 6
    started = time.monotonic()
    supervisor.stop(grace=3.0)
    assert time.monotonic() - started < 12  # one by one, 6 × 3 s: the stack's 10 s were over before the end
    assert not any(processes.alive(p) for p in pids)
    assert all(s.acquire(timeout=0.1) is None for s in supervisor.services.values())


class _Runs:
    """The ledger part on_dead_letter uses: one run, and what was recorded on it."""

    def __init__(self, run: Run, claims: tuple[str, ...] = ()) -> None:
        self._run = run
        self.claims = list(claims)
        self.recorded: list[dict[str, Any]] = []
        self.notes: dict[str, Any] = {}

    def note(self, run_id: str, fields: dict[str, Any]) -> None:
        self.notes.update(fields)

    def marked(self, field: str) -> list[dict[str, Any]]:
        mark = self.notes.get("dead_letter") or {}
        pending = self.notes.get("dead_letter.pending", mark.get("pending"))
        return [{**self._run.to_document(), "dead_letter": mark}] if pending else []

    def live_claims(self, run_id: str) -> list[str]:
        return self.claims

    def run(self, run_id: str) -> Run | None:
        return self._run if run_id == self._run.run_id else None

    def record(self, run_id: str, **change: Any) -> None:
        self.recorded.append({"run_id": run_id, **change})


def _waiting_run(*types: str) -> Run:
    return Run.from_document(
        {
            "run_id": "digits-20300101t030000z",
            "model": "digits",
            "status": "running",
            "created_at": "2030-01-01T03:00:00.000Z",
            "updated_at": "2030-01-01T03:00:00.000Z",
            "events": [{"id": f"e{n}", "type": t, "time": "2030-01-01T03:00:00.000Z"} for n, t in enumerate(types)],
        }
    )


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


def _dead_letter_context(runs: _Runs) -> Any:
    import logging

    return SimpleNamespace(
        ledger=runs,
        settings=SimpleNamespace(stage="on_dead_letter"),
        info=lambda *args, **kwargs: None,
        log=logging.getLogger("t"),
    )


@pytest.mark.parametrize(
    ("recorded", "extra", "ends"),
    [
        ((events.RUN_REQUESTED, events.DATA_FETCHED), {}, True),  # the last attempt died: nobody ended the run
        ((events.RUN_REQUESTED, events.DATA_FETCHED, events.TRAINING_SUBMITTED), {}, False),  # died after its work
        ((events.RUN_REQUESTED, events.DATA_FETCHED), {"cd4ml-rejected-by": "submit_training"}, False),
        ((events.RUN_REQUESTED, events.DATA_FETCHED), {"cd4ml-exhausted-by": "submit_training"}, False),
    ],
)
def test_a_message_pub_sub_dead_lettered_ends_its_run_after_a_grace(
    recorded: tuple[str, ...], extra: dict[str, str], ends: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the chaos session: a fifth delivery killed with its instance was dead-lettered by Pub/Sub (which
    # counts the attempt) while the run, which never heard of it, waited for the stale sweep (2 h).
    from cd4ml.stages import dead_letters

    runs = _Runs(_waiting_run(*recorded))
    ctx = _dead_letter_context(runs)
    message = _dead_letter("projects/p/subscriptions/cd4ml-on-dead-letter-submit-training-dead-letter", **extra)
    dead_letters.on_dead_letter(message, ctx)
    dead_letters.end_dead_lettered_runs(ctx)  # within the grace: a duplicate may still do the work
    assert runs.recorded == []
    assert bool(runs.notes) == ends
    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    dead_letters.end_dead_lettered_runs(ctx)
    if not ends:
        assert runs.recorded == []
        return
    [change] = runs.recorded
    assert change["status"] == "failed"
    assert change["error"]["stage"] == "submit_training"
    assert "after 5 delivery attempts on cd4ml-submit-training" in change["error"]["message"]
    assert "cd4ml dead-letters replay" in change["error"]["message"]
    assert runs.notes["dead_letter.pending"] is False


def test_a_dead_letter_whose_work_is_in_progress_or_done_ends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session: a twin copy took the claim over after the dead letter arrived and succeeded.
    from cd4ml.stages import dead_letters

    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    runs = _Runs(_waiting_run(events.RUN_REQUESTED, events.DATA_FETCHED), claims=("training-job",))
    ctx = _dead_letter_context(runs)
    dead_letters.on_dead_letter(_dead_letter("projects/p/subscriptions/cd4ml-submit-training"), ctx)
    dead_letters.end_dead_lettered_runs(ctx)  # a delivery is carrying the work out: not now
    assert runs.recorded == [] and runs.notes["dead_letter"]["pending"] is True
    runs.claims = []
    runs._run = _waiting_run(events.RUN_REQUESTED, events.DATA_FETCHED, events.TRAINING_SUBMITTED)
    dead_letters.end_dead_lettered_runs(ctx)  # done meanwhile: the mark is cleared, the run goes on
    assert runs.recorded == [] and runs.notes["dead_letter.pending"] is False


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


def test_a_dead_lettered_run_is_ended_with_the_last_error_its_stage_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session's long Vertex outage: some attempts were never counted (pushes answered 503 while
    # every instance was busy), Pub/Sub dead-lettered the message first, and the run ended without the outage.
    from cd4ml.stages import dead_letters

    monkeypatch.setattr(dead_letters, "GRACE_SECONDS", -1)
    doc = {
        **_waiting_run(events.RUN_REQUESTED, events.DATA_FETCHED).to_document(),
        "last_failure": {"stage": "submit_training", "error": "ServiceUnavailable: 503 Vertex AI unavailable"},
    }
    runs = _Runs(Run.from_document(doc))
    ctx = _dead_letter_context(runs)
    dead_letters.on_dead_letter(_dead_letter("projects/p/subscriptions/cd4ml-submit-training"), ctx)
    dead_letters.end_dead_lettered_runs(ctx)
    [change] = runs.recorded
    assert change["error"]["stage"] == "submit_training"
    assert (
        "Last error seen by submit_training: ServiceUnavailable: 503 Vertex AI unavailable"
        in (change["error"]["message"])
    )


def test_the_dead_letters_source_stage_is_known_from_either_subscription() -> None:
    from cd4ml.stages.dead_letters import source_stage

    ours = _dead_letter("projects/p/subscriptions/cd4ml-on-dead-letter-trigger-canary-dead-letter")
    assert source_stage(ours) == "trigger_canary"
    twin = _dead_letter("", CloudPubSubDeadLetterSourceSubscription="projects/p/subscriptions/cd4ml-promote-twin2")
    assert source_stage(twin) == "promote"


def test_a_training_job_vertex_cannot_report_on_ends_its_run_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the chaos session: a job created just before a long Vertex outage was watched forever (the stale
    # sweep leaves runs with a job in flight alone, trusting Vertex's own timeout).
    import logging
    from datetime import timedelta

    from cd4ml.events import format_time
    from cd4ml.stages import training

    notes: dict[str, Any] = {}
    recorded: list[dict[str, Any]] = []
    ledger = SimpleNamespace(
        note=lambda run_id, fields: notes.update(fields),
        record=lambda run_id, **change: recorded.append(change),
    )
    ctx = SimpleNamespace(ledger=ledger, settings=SimpleNamespace(stage="watch_training"), log=logging.getLogger("t"))
    doc: dict[str, Any] = {"run_id": "digits-20300101t030000z", "training": {"job": "jobs/1", "active": True}}
    down = RetryableError("Vertex AI unavailable")
    training.unreadable(ctx, doc, down)  # type: ignore[arg-type]  # first failure: noted, nothing ended
    assert recorded == [] and notes["training.unreadable_since"]
    doc["training"]["unreadable_since"] = format_time(now() - timedelta(seconds=60))
    training.unreadable(ctx, doc, down)  # type: ignore[arg-type]  # a minute of outage: the job may be fine
    assert recorded == []
    doc["training"]["unreadable_since"] = format_time(now() - timedelta(hours=3))
    training.unreadable(ctx, doc, down)  # type: ignore[arg-type]
    [change] = recorded
    assert change["status"] == "failed" and change["error"]["stage"] == "watch_training"
    assert "could not read training job jobs/1 for 7200 s: Vertex AI unavailable" in change["error"]["message"]
    assert notes["training.active"] is False


def test_picked_ports_avoid_the_ephemeral_range_and_are_never_picked_twice() -> None:
    """CI failed at start-up when a port picked for a stand-in was taken, before the stand-in bound it, by one of
    the thousands of outgoing connections (ephemeral ports) or by another pick: picks now come from below the
    kernel's ephemeral range and are reserved machine-wide for a while."""
    from local_emulator import processes

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
    from local_emulator import pubsub_push

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
