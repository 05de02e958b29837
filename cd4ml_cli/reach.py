"""Reaching the services the command talks to: fail in seconds, in one line naming the problem and the fix.

Client libraries retry an unavailable service for minutes (Firestore's default retry: 300 s) and then raise a
``RetryError`` whose text is a gRPC dump. The command probes the emulators it was pointed at before it calls
them, bounds its own calls, and turns any Google API error that escapes into one line.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from cd4ml.errors import Cd4mlError

#: How long a call of the command may wait for a service before it gives up (seconds).
CALL_TIMEOUT = 10.0
#: How long an emulator's port may take to accept a connection.
PROBE_TIMEOUT = 2.0

_EMULATORS = (
    ("PUBSUB_EMULATOR_HOST", "Pub/Sub"),
    ("FIRESTORE_EMULATOR_HOST", "Firestore"),
    ("STORAGE_EMULATOR_HOST", "Cloud Storage"),
)
_FIX_LOCAL = "the local stack is down or part of it stopped: `cd4ml local down && cd4ml local up`"
_FIX_CLOUD = (
    "check CD4ML_PROJECT, the network and the credentials (`gcloud auth application-default login`, or "
    "GOOGLE_APPLICATION_CREDENTIALS)"
)


def _host_port(value: str) -> tuple[str, int] | None:
    hostport = value.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return (host or "127.0.0.1", int(port)) if port.isdigit() else None


def probe_emulators(env: Mapping[str, str] | None = None) -> None:
    """Cd4mlError naming the first emulator (``*_EMULATOR_HOST``) whose port accepts no connection."""
    env = os.environ if env is None else env
    for variable, service in _EMULATORS:
        address = _host_port(env.get(variable, ""))
        if address is None:
            continue
        try:
            socket.create_connection(address, timeout=PROBE_TIMEOUT).close()
        except OSError as refused:
            why = refused.strerror or type(refused).__name__
            raise Cd4mlError(
                f"{service} at {address[0]}:{address[1]} ({variable}) does not answer ({why.lower()}): {_FIX_LOCAL}"
            ) from refused


def fix() -> str:
    """What to do when a service does not answer: the local stack's fix with emulators configured, else the cloud's."""
    return _FIX_LOCAL if any(os.environ.get(variable) for variable, _ in _EMULATORS) else _FIX_CLOUD


def explain(error: BaseException) -> str:
    """One line for a Google API error that reached the command: what failed, and what to do."""
    from google.api_core import exceptions

    local = any(os.environ.get(variable) for variable, _ in _EMULATORS)
    fix = _FIX_LOCAL if local else _FIX_CLOUD
    if isinstance(error, exceptions.RetryError):
        cause = error.cause if error.cause is not None else error
        return f"a service did not answer in time ({type(cause).__name__}): {fix}"
    if isinstance(error, exceptions.PermissionDenied | exceptions.Forbidden | exceptions.Unauthenticated):
        return f"permission denied: {_first_line(error)}: grant the role the README names for this command, or {fix}"
    if isinstance(error, exceptions.ServiceUnavailable | exceptions.DeadlineExceeded):
        return f"a service is unavailable ({_first_line(error)}): {fix}"
    return f"{type(error).__name__}: {_first_line(error)}: {fix}"


def _first_line(error: BaseException) -> str:
    text = " ".join(str(getattr(error, "message", "") or error).split())
    return text if len(text) <= 200 else text[:199] + "…"


def retry() -> object:
    """The bounded retry of the command's calls: unavailable services are retried for CALL_TIMEOUT, not 300 s."""
    from google.api_core import exceptions
    from google.api_core.retry import Retry, if_exception_type

    return Retry(
        predicate=if_exception_type(exceptions.ServiceUnavailable, exceptions.DeadlineExceeded),
        initial=0.2,
        maximum=2.0,
        timeout=CALL_TIMEOUT,
    )
