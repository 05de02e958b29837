"""Cloud Run's part for the local functions: a front end per function that routes each push to an instance of
it, one request per instance at a time (Cloud Run functions' default concurrency), starting instances as
needed (a crashed one is replaced by the next that starts), as Cloud Run does.

    python -m local_emulator.stack.supervisor --spec FILE [--chaos-dir DIR --crash-rate 0.2 --seed N]

The spec (written by ``local_emulator.stack``) lists, per stage, the public port the push subscriptions
target, the command line (without ``--port``) and the environment of its functions-framework server. Each
instance listens on a private port in its own process group (gunicorn forks a worker); every instance of a
stage appends to ``LOG_DIR/fn-STAGE.log``. A push that finds every instance busy waits for one, or for a new one
to start (Cloud Run holds requests during a cold start); one whose instance dies under it is answered 503, so
Pub/Sub redelivers it.

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
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from local_emulator.common import faults, processes
from local_emulator.common.service import configure_logging

_log = logging.getLogger("local_emulator.stack.supervisor")
#: How long a push waits for an instance (a free one, or a new one starting) before it is answered 503.
START_WAIT_SECONDS = 60.0
#: Instances per function at most (Terraform's ``max_instance_count`` is larger; two cores are not).
MAX_INSTANCES = 3
#: A killed delivery's kill moment is uniform in [0, this] after it reached the instance.
KILL_WITHIN_SECONDS = 1.5
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade", "host", "content-length"}
)


@dataclass
class Instance:
    """One instance of a function: a functions-framework server in its own process group, one request at a time."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    busy: bool = False

    def start(self) -> bool:
        """Start the server and wait until it listens; False when it exited or did not listen in time."""
        self.port = processes.free_port()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*self.argv, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_WAIT_SECONDS
        while time.monotonic() < deadline and self.alive():
            if processes.port_open(self.port):
                return True
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the instance's process group (what an instance crash looks like)."""
        self.send(signal.SIGKILL)

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def wait(self, deadline: float) -> bool:
        """True once the instance's process exited (reaped), False at ``deadline``."""
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


@dataclass
class Service:
    """One function's instances, as Cloud Run runs a gen2 function: each instance serves one request at a time
    (the default concurrency of Cloud Run functions is 1), new instances start when all are busy (up to
    ``max_instances``), and a crashed instance takes only its own request with it; the next request gets a live
    instance or a new one. (One multi-threaded instance per function made every crash kill all requests in flight,
    a fault Cloud Run never produces; the chaos storm's runs stalled on it.)"""

    stage: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    max_instances: int = MAX_INSTANCES
    instances: list[Instance] = field(default_factory=list)
    starting: int = 0
    started: int = 0
    stopped: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)

    def acquire(self, timeout: float = START_WAIT_SECONDS) -> Instance | None:
        """A live idle instance, marked busy; None after ``timeout`` (or once stopped)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.stopped:
                    return None
                self.instances = [i for i in self.instances if i.busy or i.alive()]  # forget the dead
                idle = next((i for i in self.instances if not i.busy), None)
                if idle is not None:
                    idle.busy = True
                    return idle
                if len(self.instances) + self.starting < self.max_instances:
                    self.starting += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.cond.wait(min(remaining, 0.5))
        instance = Instance(self.argv, self.env, self.log, busy=True)
        ready = instance.start()
        with self.cond:
            self.starting -= 1
            self.started += 1
            if ready and not self.stopped:
                self.instances.append(instance)
                return instance
            self.cond.notify_all()
        instance.kill()
        return None

    def release(self, instance: Instance) -> None:
        with self.cond:
            instance.busy = False
            self.cond.notify_all()

    def warm(self) -> None:
        """Start the first instance, so the function answers its first push without a cold start."""
        instance = self.acquire()
        if instance is not None:
            self.release(instance)

    def stop_all(self, sig: int) -> list[Instance]:
        with self.cond:
            self.stopped = True
            instances = list(self.instances)
            self.cond.notify_all()
        for instance in instances:
            instance.send(sig)
        return instances


class Supervisor:
    """Every function's instances and the crash injection."""

    def __init__(self, spec: Mapping[str, Any], chaos_dir: Path | None, crash_rate: float, seed: int) -> None:
        log_dir = Path(spec["log_dir"])
        self.services = {
            stage: Service(
                stage,
                list(f["argv"]),
                dict(f["env"]),
                log_dir / f"fn-{stage}.log",
                int(f.get("max_instances", MAX_INSTANCES)),
            )
            for stage, f in spec["functions"].items()
        }
        self.ports = {stage: int(f["port"]) for stage, f in spec["functions"].items()}
        self.chaos_dir = chaos_dir
        self.crash_rate = crash_rate
        self.random = random.Random(seed)
        self.stopping = threading.Event()
        self.counts: dict[str, dict[str, int]] = {
            s: {"deliveries": 0, "killed_while_running": 0, "killed_before_ack": 0, "instances_started": 0}
            for s in self.services
        }
        self._lock = threading.Lock()

    def count(self, stage: str, what: str) -> None:
        with self._lock:
            self.counts[stage][what] += 1
            self.counts[stage]["instances_started"] = self.services[stage].started
            if self.chaos_dir is not None:
                tmp = self.chaos_dir / "supervisor.json.tmp"
                tmp.write_text(json.dumps(self.counts))
                os.replace(tmp, self.chaos_dir / "supervisor.json")

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
        instances took long enough for the supervisor to be SIGKILLed midway, orphaning the rest). A stopped
        service starts no instance any more.
        """
        self.stopping.set()
        instances = [i for service in self.services.values() for i in service.stop_all(signal.SIGTERM)]
        deadline = time.monotonic() + grace
        for instance in instances:
            if not instance.wait(deadline):
                instance.kill()
                instance.wait(time.monotonic() + 2.0)


def forward(
    supervisor: Supervisor, stage: str, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, bytes, str]:
    """Deliver one request to an instance of the stage, crashing it when the plan says so: (status, body, type)."""
    service = supervisor.services[stage]
    supervisor.count(stage, "deliveries")
    instance = service.acquire()
    if instance is None:
        return 503, b"no instance available", "text/plain"
    try:
        return _deliver(supervisor, stage, instance, method, path, headers, body)
    finally:
        service.release(instance)


def _deliver(
    supervisor: Supervisor,
    stage: str,
    instance: Instance,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
) -> tuple[int, bytes, str]:
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
    if delay is not None and instance.alive():
        supervisor.count(stage, "killed_before_ack")  # the work is done; Pub/Sub never hears of it
        instance.kill()
        return 503, b"instance crashed before answering", "text/plain"
    return answer


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers an instance gets: the request's own, less the hop-by-hop ones (RFC 9110 section 7.6.1) and
    the length (set again for the body forwarded). Cloud Run hands a push to the function as Pub/Sub sent it: the
    raw push body, which functions-framework converts (dropping ``subscription`` and ``deliveryAttempt``, which
    ``cd4ml.push`` reads from the request itself). No CloudEvent headers are added: production sends none."""
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


def _front(supervisor: Supervisor, stage: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = forwarded_headers(dict(self.headers.items()))
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
    servers = [_front(supervisor, stage) for stage in supervisor.services]
    for service in supervisor.services.values():
        threading.Thread(target=service.warm, daemon=True).start()
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _log.info("supervising", extra={"stages": sorted(supervisor.services), "crash_rate": crash_rate})
    stop.wait()
    supervisor.stop()
    for server in servers:
        server.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_emulator.stack.supervisor", description=__doc__)
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
