"""Fault injection for the chaos session: outages of the stand-ins and crashes at the worst moment of an effect.

Inert unless ``LOCAL_CHAOS_DIR`` is set (only ``nox -s chaos`` sets it); the functions never read it. The
chaos driver steers the stand-ins through plain files in that directory, so nothing in the functions knows:

- ``down/SERVICE`` exists → the stand-in answers as a service in an outage: gRPC ``UNAVAILABLE``, HTTP 503
  (what Google's front ends answer while a service is down; the clients' retry rules treat both as transient).
- ``crash/POINT/KEY`` holds a stage name → when the stand-in has carried out the effect POINT for KEY (a run id:
  a job label, a build tag, a webhook payload value), it SIGKILLs that stage's function instance (pid in
  ``pids/STAGE``, written by the supervisor) *before answering*: the effect exists, the caller never learns it,
  which is the worst moment of an exactly-once guard (after the act, before its result is recorded). Fires once.
- ``fired/`` keeps what fired, ``pids/STAGE`` the supervised instances' process groups.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHAOS_DIR_ENV = "LOCAL_CHAOS_DIR"
#: What a stand-in in an outage says; the chaos report looks for it in the run's error.
OUTAGE = "service unavailable (local outage injected by the chaos session)"


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


def effect_done(point: str, keys: Iterable[str]) -> None:
    """Called by a stand-in after it carried out ``point``: crash the caller when the driver planned it."""
    root = chaos_dir()
    if root is None:
        return
    for key in keys:
        planned = root / "crash" / point / key
        stage = ""
        with contextlib.suppress(FileNotFoundError, OSError):
            stage = planned.read_text().strip()
            (root / "fired").mkdir(exist_ok=True)
            os.replace(planned, root / "fired" / f"{point}-{key}")  # once: a second caller finds nothing
            (root / "fired" / f"{point}-{key}").write_text(f"{point} {key} {stage}")
        if stage:
            kill_instance(root, stage)
            return


def kill_instance(root: Path, stage: str) -> bool:
    """SIGKILL the process group of ``stage``'s supervised instance; False when there is none."""
    try:
        pid = int((root / "pids" / stage).read_text())
        os.killpg(pid, signal.SIGKILL)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
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
                return inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

    return _Outage()
