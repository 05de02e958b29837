"""The chaos session's supervisor and fault switches, which start and kill real processes (found by ``nox -s chaos``,
kept as tests of the stand-ins): the worst moment kills the calling instance only; one request per instance; no
instance left behind."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

from local_emulator.common import faults


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


_STUBBORN_SERVER = (
    "import http.server, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[-1])), http.server.BaseHTTPRequestHandler).serve_forever()"
)


def test_an_instance_serves_one_request_at_a_time_and_a_crash_takes_only_its_own(tmp_path: Path) -> None:
    # Found by the chaos session: one multi-threaded instance per function made every crash kill all requests in
    # flight; Cloud Run functions serve one request per instance (default concurrency 1) and start more.
    from local_emulator.stack.supervisor import Service

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
    from local_emulator.common import processes
    from local_emulator.stack.supervisor import Supervisor

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
