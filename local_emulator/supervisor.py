"""Cloud Run's part for the local functions: a front end per function that routes pushes to its instance and
starts a new instance when one dies, as Cloud Run does after a crash.

    python -m local_emulator.supervisor --spec FILE [--chaos-dir DIR --crash-rate 0.2 --seed N]

The spec (written by ``local_emulator.stack``) lists, per stage, the public port the push subscriptions
target, the command line (without ``--port``) and the environment of its functions-framework server. Each
instance listens on a private port in its own process group (gunicorn forks a worker); its output is appended
to ``LOG_DIR/fn-STAGE.log``, so a restarted instance keeps writing the same log. A push that arrives while the
instance starts waits for it (Cloud Run holds requests during a cold start); one whose instance dies under it
is answered 503, so Pub/Sub redelivers it.

With ``--crash-rate`` (the chaos session), that share of deliveries ends in a SIGKILL of the instance at a
random moment: while the handler runs (after a uniform delay), or, when the handler answered first, after it
finished and before its answer reaches Pub/Sub. Counts go to ``CHAOS_DIR/supervisor.json``.

SIGTERM stops every instance (by process group) and then the supervisor: ``cd4ml local down`` stops it by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from local_emulator import faults, processes
from local_emulator._service import configure_logging

_log = logging.getLogger("local_emulator.supervisor")
#: How long a push waits for its instance to (re)start before it is answered 503.
START_WAIT_SECONDS = 60.0
#: A killed delivery's kill moment is uniform in [0, this] after it reached the instance.
KILL_WITHIN_SECONDS = 1.5
_FORWARDED_HEADERS = ("content-type", "ce-id", "ce-type", "ce-source", "ce-specversion", "ce-time", "ce-subject")


@dataclass
class Instance:
    """One function's current instance and its history."""

    stage: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    pid_file: Path | None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    starts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def start(self) -> None:
        self.ready.clear()
        self.port = processes.free_port()
        with self.lock:  # never a new instance once stop() ran: it would outlive the supervisor
            if self.stopped:
                return
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [*self.argv, "--port", str(self.port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,
                )
        self.starts += 1
        if self.pid_file is not None:
            self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + START_WAIT_SECONDS
        while time.monotonic() < deadline and self.proc.poll() is None:
            if processes.port_open(self.port):
                self.ready.set()
                return
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the instance's process group (what an instance crash looks like)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def send(self, sig: int) -> None:
        """Mark the instance stopped (no restart) and send ``sig`` to its process group."""
        with self.lock:
            self.stopped = True
            proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def wait(self, deadline: float) -> bool:
        """True once the instance's process exited (reaped), False at ``deadline``."""
        proc = self.proc
        while proc is not None and proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


class Supervisor:
    """Every instance, the restart loop and the crash injection."""

    def __init__(self, spec: Mapping[str, Any], chaos_dir: Path | None, crash_rate: float, seed: int) -> None:
        log_dir = Path(spec["log_dir"])
        if chaos_dir is not None:
            (chaos_dir / "pids").mkdir(parents=True, exist_ok=True)
        self.instances = {
            stage: Instance(
                stage,
                list(f["argv"]),
                dict(f["env"]),
                log_dir / f"fn-{stage}.log",
                chaos_dir / "pids" / stage if chaos_dir else None,
            )
            for stage, f in spec["functions"].items()
        }
        self.ports = {stage: int(f["port"]) for stage, f in spec["functions"].items()}
        self.chaos_dir = chaos_dir
        self.crash_rate = crash_rate
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.counts: dict[str, dict[str, int]] = {
            s: {"deliveries": 0, "killed_while_running": 0, "killed_before_ack": 0, "restarts": 0}
            for s in self.instances
        }
        self._lock = threading.Lock()

    def count(self, stage: str, what: str) -> None:
        with self._lock:
            self.counts[stage][what] += 1
            if self.chaos_dir is not None:
                tmp = self.chaos_dir / "supervisor.json.tmp"
                tmp.write_text(json.dumps(self.counts))
                os.replace(tmp, self.chaos_dir / "supervisor.json")

    def keep_alive(self, instance: Instance) -> None:
        """Start the instance, and a new one whenever it dies, until the supervisor stops."""
        while not self.stopping.is_set():
            instance.start()
            if instance.proc is None or instance.stopped:
                return
            instance.proc.wait()
            instance.ready.clear()
            if self.stopping.is_set():
                return
            self.count(instance.stage, "restarts")
            _log.warning(
                "instance died; starting a new one",
                extra={"stage": instance.stage, "exit_code": instance.proc.returncode},
            )

    def crash_plan(self) -> float | None:
        """None (no crash) or the delay after which this delivery's instance is killed.

        The rate is ``--crash-rate``, or what ``CHAOS_DIR/crash-rate`` says now (the driver turns crashes on
        and off between its phases).
        """
        rate = self.crash_rate
        if self.chaos_dir is not None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                rate = float((self.chaos_dir / "crash-rate").read_text())
        with self._lock:
            if self.random.random() >= rate:
                return None
            return self.random.uniform(0.0, KILL_WITHIN_SECONDS)

    def stop(self, grace: float = 3.0) -> None:
        """Stop every instance at once: SIGTERM to all, SIGKILL to those still up after ``grace`` seconds.

        All at once, so stopping stays well inside the stack's own timeout for the supervisor (one by one, 16
        instances took long enough for the supervisor to be SIGKILLed midway, orphaning the rest).
        """
        self.stopping.set()
        for instance in self.instances.values():
            instance.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for instance in self.instances.values():
            if not instance.wait(deadline):
                instance.send(signal.SIGKILL)
                instance.wait(time.monotonic() + 2.0)


def forward(
    supervisor: Supervisor, stage: str, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, bytes, str]:
    """Deliver one request to the stage's instance, crashing it when the plan says so: (status, body, type)."""
    instance = supervisor.instances[stage]
    supervisor.count(stage, "deliveries")
    if not instance.ready.wait(START_WAIT_SECONDS):
        return 503, b"instance not ready", "text/plain"
    delay = supervisor.crash_plan()
    done = threading.Event()
    killer: threading.Timer | None = None
    if delay is not None:

        def kill() -> None:
            if not done.is_set():
                supervisor.count(stage, "killed_while_running")
                instance.kill()

        killer = threading.Timer(delay, kill)
        killer.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", instance.port, timeout=900)
        conn.request(method, path, body=body, headers=dict(headers))
        response = conn.getresponse()
        answer = (response.status, response.read(), response.getheader("Content-Type") or "text/plain")
        conn.close()
    except (OSError, http.client.HTTPException) as lost:
        return 503, f"instance lost: {type(lost).__name__}".encode(), "text/plain"
    finally:
        done.set()
        if killer is not None:
            killer.cancel()
    if delay is not None and instance.proc is not None and instance.proc.poll() is None:
        supervisor.count(stage, "killed_before_ack")  # the work is done; Pub/Sub never hears of it
        instance.kill()
        return 503, b"instance crashed before answering", "text/plain"
    return answer


_TOPIC_IN_PATH = re.compile(r"projects/[^/?]+/topics/[^/?]+")


def eventarc_headers(path: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """The headers of Eventarc's delivery of a raw Pub/Sub push: a binary-mode ``messagePublished`` CloudEvent whose
    data is the push body itself (``message`` and ``subscription``), as a gen2 function receives it.

    functions-framework turns a raw push into a CloudEvent whose data keeps only the message, so a function behind
    the emulator could not tell two subscriptions of one topic apart (the chaos session's twins): their failed
    deliveries were counted as one message's, and a run was given up after 5 failures spread over 3 subscriptions.
    Requests that already are CloudEvents, or are not push bodies, pass unchanged.
    """
    if any(k.lower() == "ce-id" for k in headers):
        return dict(headers)
    try:
        envelope = json.loads(body)
        message = envelope["message"]
        message_id, subscription = str(message["messageId"]), str(envelope["subscription"])
    except (ValueError, TypeError, KeyError):
        return dict(headers)
    topic = _TOPIC_IN_PATH.search(path)
    event = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": message_id,
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": f"//pubsub.googleapis.com/{topic.group(0) if topic else subscription}",
    }
    if message.get("publishTime"):
        event["ce-time"] = str(message["publishTime"])
    return {**{k: v for k, v in headers.items() if k.lower() != "content-type"}, **event}


def _front(supervisor: Supervisor, stage: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            kept = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED_HEADERS}
            headers = eventarc_headers(self.path, kept, body) if self.command == "POST" else kept
            status, answer, content_type = forward(supervisor, stage, self.command, self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_POST = _handle
        do_GET = _handle

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", supervisor.ports[stage]), Handler)
    server.daemon_threads = True
    return server


def serve(spec: Mapping[str, Any], chaos_dir: Path | None, crash_rate: float, seed: int) -> int:
    supervisor = Supervisor(spec, chaos_dir, crash_rate, seed)
    servers = [_front(supervisor, stage) for stage in supervisor.instances]
    for instance in supervisor.instances.values():
        threading.Thread(target=supervisor.keep_alive, args=(instance,), daemon=True).start()
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _log.info("supervising", extra={"stages": sorted(supervisor.instances), "crash_rate": crash_rate})
    stop.wait()
    supervisor.stop()
    for server in servers:
        server.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_emulator.supervisor", description=__doc__)
    parser.add_argument("--spec", type=Path, required=True, help="JSON: log_dir, functions {stage: port, argv, env}")
    parser.add_argument(
        "--chaos-dir",
        type=Path,
        default=faults.chaos_dir(),
        help=f"the chaos session's directory: pids, counts, crash-rate (default ${faults.CHAOS_DIR_ENV})",
    )
    parser.add_argument("--crash-rate", type=float, default=0.0, help="share of deliveries that crash (default 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging("supervisor")
    return serve(json.loads(args.spec.read_text()), args.chaos_dir, args.crash_rate, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
