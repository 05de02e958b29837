"""Background processes of the local stack: started in their own session, stopped by pid (process group)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

# Ports the stack picks for its servers come from below the kernel's ephemeral range, so no outgoing connection
# (the functions make thousands) and no bind to port 0 can take one between its pick and its server's bind; a pick
# is reserved for a while (a file per port, shared by every stack on the machine) so two stacks never pick alike.
_PICKS = Path(tempfile.gettempdir()) / "cd4ml-ports"
_RESERVED_SECONDS = 300.0
_LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range, reserved for this caller."""
    _PICKS.mkdir(parents=True, exist_ok=True)
    top = _ephemeral_start() - 1
    for _ in range(2000):
        port = random.randint(_LOWEST, top) if top > _LOWEST else random.randint(1024, 65535)
        if not _reserve(port):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free TCP port between {_LOWEST} and {top}")


def _reserve(port: int) -> bool:
    """True when this caller now holds ``port``'s pick: nobody picked it in the last _RESERVED_SECONDS."""
    mark = _PICKS / str(port)
    try:
        fd = os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - mark.stat().st_mtime < _RESERVED_SECONDS:
                return False
            os.utime(mark)  # an old pick: take it over (two callers may both do so; the bind check still holds)
            return True
        except FileNotFoundError:
            return False
    os.close(fd)
    return True


def start(name: str, argv: Sequence[str], *, env: Mapping[str, str], log_dir: Path, cwd: Path | None = None) -> int:
    """Start ``argv`` detached in a new session (its own process group), output to ``log_dir/name.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    return proc.pid


@contextlib.contextmanager
def serving(name: str, argv: Callable[[int], Sequence[str]], log_dir: Path, timeout: float = 60.0) -> Iterator[str]:
    """A server started on a picked port (``argv(port)``); yields ``127.0.0.1:PORT`` once it listens, and stops
    it by pid afterwards."""
    port = free_port()
    pid = start(name, argv(port), env=dict(os.environ), log_dir=log_dir)
    try:
        wait_until(lambda: port_open(port), what=name, timeout=timeout, pid=pid, log=log_dir / f"{name}.log")
        yield f"127.0.0.1:{port}"
    finally:
        stop(pid)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left after ``timeout``."""
    stop_all([pid], timeout)


def stop_all(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGTERM every process group led by one of ``pids`` at once, then SIGKILL what is left after ``timeout``:
    the groups wind down together (a stack's dozen processes took ~20 s one after another)."""
    left = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while left and time.monotonic() < deadline:
            for pid in list(left):
                _reap(pid)
            alive = _groups_alive(left)
            left = {pid for pid in left if pid in alive}
            if left:
                time.sleep(0.05)
        if not left:
            return


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _groups_alive(pgids: set[int]) -> set[int]:
    """Which of ``pgids`` still lead a process group with a live (not zombie) member."""
    alive: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().split(") ", 1)[1].split()
        except (FileNotFoundError, IndexError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            alive.add(int(fields[2]))
    return alive


def wait_until(
    check: Callable[[], bool], *, what: str, timeout: float, pid: int | None = None, log: Path | None = None
) -> None:
    """Poll ``check`` until true; TimeoutError naming ``what`` (and the log tail) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        if pid is not None and not alive(pid):
            raise RuntimeError(f"{what} exited during start-up" + _tail(log))
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s" + _tail(log))


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-15:]
    return f"; last lines of {log}:\n" + "\n".join(lines)
