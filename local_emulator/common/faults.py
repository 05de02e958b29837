"""Fault injection for the chaos session: outages of the stand-ins and crashes at the worst moment of an effect.

Inert unless ``LOCAL_CHAOS_DIR`` is set (only ``nox -s chaos`` sets it); the functions never read it. The
chaos driver steers the stand-ins through plain files in that directory, so nothing in the functions knows:

- ``down/SERVICE`` exists → the stand-in answers as a service in an outage: gRPC ``UNAVAILABLE``, HTTP 503
  (what Google's front ends answer while a service is down; the clients' retry rules treat both as transient).
- ``crash/POINT/KEY`` holds a stage name → when the stand-in has carried out the effect POINT for KEY (a run id:
  a job label, a build tag, a webhook payload value), it SIGKILLs the function instance that called it (the
  process that owns the caller's end of the connection, a functions-framework server of that stage) *before
  answering*: the effect exists, the caller never learns it, which is the worst moment of an exactly-once guard
  (after the act, before its result is recorded). Fires once.
- ``fired/`` keeps what fired.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHAOS_DIR_ENV = "LOCAL_CHAOS_DIR"
#: What a stand-in in an outage says; the chaos report looks for it in the run's error.
OUTAGE = "service unavailable (local outage injected by the chaos session)"
#: The port of the caller's end of the gRPC call this thread serves (set by ``outage_interceptor``).
_call = threading.local()


def chaos_dir() -> Path | None:
    value = os.environ.get(CHAOS_DIR_ENV)
    return Path(value) if value else None


def is_down(service: str) -> bool:
    """True while the chaos driver holds ``service`` down."""
    root = chaos_dir()
    return root is not None and (root / "down" / service).exists()


def set_down(root: Path, service: str, down: bool) -> None:
    """Take ``service`` down or bring it back (the driver's side)."""
    flag = root / "down" / service
    if down:
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


def plan_crash(root: Path, point: str, key: str, stage: str) -> None:
    """Kill ``stage``'s instance once, right after the stand-in carried out ``point`` for ``key``."""
    folder = root / "crash" / point
    folder.mkdir(parents=True, exist_ok=True)
    (folder / key).write_text(stage)


def fired(root: Path) -> list[str]:
    """The planned crashes that happened, as ``POINT KEY``."""
    folder = root / "fired"
    return sorted(p.read_text() for p in folder.iterdir()) if folder.is_dir() else []


def effect_done(point: str, keys: Iterable[str], caller_port: int | None = None) -> None:
    """Called by a stand-in after it carried out ``point``: crash the caller when the driver planned it.

    ``caller_port``: the TCP port of the caller's end of the connection (HTTP stand-ins pass their client
    address's); gRPC stand-ins leave it to the interceptor, which noted the call's peer."""
    root = chaos_dir()
    if root is None:
        return
    port = caller_port if caller_port is not None else getattr(_call, "port", None)
    for key in keys:
        planned = root / "crash" / point / key
        stage = ""
        with contextlib.suppress(FileNotFoundError, OSError):
            stage = planned.read_text().strip()
            (root / "fired").mkdir(exist_ok=True)
            os.replace(planned, root / "fired" / f"{point}-{key}")  # once: a second caller finds nothing
            killed = port is not None and kill_caller(port, stage)
            (root / "fired" / f"{point}-{key}").write_text(
                f"{point} {key} {stage}{'' if killed else ' (caller not found)'}"
            )
        if stage:
            return


def _tcp_sockets() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, socket inode) of every TCP socket, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9:
                    local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
                    found.append((local, remote, fields[3], f"socket:[{fields[9]}]"))
    return found


def _inodes(pid: str) -> dict[str, int]:
    """The socket inodes a process holds: {"socket:[N]": pid}."""
    held = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    held[link] = int(pid) if pid.isdigit() else os.getpid()
    return held


def owner_of(port: int, server_ports: set[int] | None = None) -> int | None:
    """The pid of the process whose TCP socket has local ``port`` and, when given, a remote port among
    ``server_ports`` (an ephemeral port can serve connections to several servers at once)."""
    sockets = _tcp_sockets()
    inodes = {
        i for local, remote, _, i in sockets if local == port and (server_ports is None or remote in server_ports)
    }
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for inode, owner in _inodes(pid).items():
            if inode in inodes:
                return owner
    return None


def listening_ports() -> set[int]:
    """The TCP ports this process listens on (its servers')."""
    own = _inodes("self")
    return {local for local, _, state, inode in _tcp_sockets() if state == "0A" and inode in own}


def kill_caller(port: int, stage: str) -> bool:
    """SIGKILL the process group of the ``stage`` function instance whose connection comes from ``port``; False
    when that is not a functions-framework server of ``stage`` (never kill anything else)."""
    pid = owner_of(port, listening_ports())
    if pid is None:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"functions_framework" not in argv or stage.encode() not in argv:
            return False
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (OSError, ProcessLookupError):
        return False
    return True


def outage_interceptor(service: str) -> Any:
    """A gRPC server interceptor that answers UNAVAILABLE while ``service`` is down."""
    import grpc

    class _Outage(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
            handler = continuation(details)
            if handler is None or handler.unary_unary is None or chaos_dir() is None:
                return handler
            inner = handler.unary_unary

            def unary(request: Any, context: Any) -> Any:
                if is_down(service):
                    context.abort(grpc.StatusCode.UNAVAILABLE, OUTAGE)
                peer = str(context.peer() or "")  # ipv4:127.0.0.1:PORT or ipv6:[::1]:PORT
                _call.port = int(peer.rsplit(":", 1)[1]) if peer.rsplit(":", 1)[-1].isdigit() else None
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

    return _Outage()
