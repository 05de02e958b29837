"""A local Vertex AI job as the runners see it: its context, how it ended, and helpers both runners share.

Shared by ``runner`` (Python packages) and ``container`` (container images), so neither imports
the other's module at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from google.cloud import aiplatform_v1
from google.rpc import code_pb2

STDERR_TAIL_LINES = 20
_TAIL_BYTES = 64 * 1024

JobState = aiplatform_v1.JobState


@dataclass(frozen=True)
class JobContext:
    """What a run needs to know about its job and its surroundings."""

    job_id: str
    project: str
    location: str
    job_dir: Path
    job: aiplatform_v1.CustomJob
    base_env: Mapping[str, str]
    """The server's environment: where STORAGE_EMULATOR_HOST is found, and what pip runs with."""
    cache_dir: Path
    """Where the trainer environments are cached (``envs``)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: a terminal state and, unless it succeeded, a google.rpc code and message."""

    state: int
    """A terminal ``aiplatform_v1.JobState``."""
    code: int = code_pb2.OK
    message: str = ""


def cancelled() -> Outcome:
    return Outcome(JobState.JOB_STATE_CANCELLED, code_pb2.CANCELLED, "The job was cancelled.")


def seconds(value: object) -> float:
    """Seconds of a proto Duration field (proto-plus hands out a timedelta); 0 means unset."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    seconds = getattr(value, "seconds", 0)
    nanos = getattr(value, "nanos", 0)
    return float(seconds) + float(nanos) / 1e9


def stderr_tail(path: Path) -> str:
    """The last lines of the trainer's stderr, as a suffix for an error message."""
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            lines = stream.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    tail = lines[-STDERR_TAIL_LINES:]
    if not tail:
        return ""
    return f"\nLast {len(tail)} lines of stderr:\n" + "\n".join(tail)
