"""Builds of the local Cloud Build: status constants, their JSON form, and the store that keeps them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild
from google.protobuf import json_format

from local_emulator.common.service import atomic_write

Status = cloudbuild.Build.Status
FailureType = cloudbuild.Build.FailureInfo.FailureType
# The members as typed values: mypy sees proto-plus enum members as plain ints.
QUEUED = Status(Status.QUEUED)
WORKING = Status(Status.WORKING)
SUCCESS = Status(Status.SUCCESS)
FAILURE = Status(Status.FAILURE)
INTERNAL_ERROR = Status(Status.INTERNAL_ERROR)
TIMEOUT = Status(Status.TIMEOUT)
CANCELLED = Status(Status.CANCELLED)
EXPIRED = Status(Status.EXPIRED)
USER_BUILD_STEP = FailureType(FailureType.USER_BUILD_STEP)
PUSH_FAILED = FailureType(FailureType.PUSH_FAILED)
PUSH_IMAGE_NOT_FOUND = FailureType(FailureType.PUSH_IMAGE_NOT_FOUND)
FETCH_SOURCE_FAILED = FailureType(FailureType.FETCH_SOURCE_FAILED)

#: Statuses after which a build never changes again.
TERMINAL = frozenset({SUCCESS, FAILURE, INTERNAL_ERROR, TIMEOUT, CANCELLED, EXPIRED})


def now() -> datetime:
    return datetime.now(UTC)


def span(start: datetime) -> cloudbuild.TimeSpan:
    """From start until now."""
    return cloudbuild.TimeSpan(start_time=start, end_time=now())


def copy_build(build: cloudbuild.Build) -> cloudbuild.Build:
    """A deep copy (proto-plus messages share their underlying protobuf otherwise)."""
    copied: cloudbuild.Build = cloudbuild.Build.deserialize(cloudbuild.Build.serialize(build))
    return copied


def build_json(build: cloudbuild.Build) -> str:
    """The Build as the real API renders it in JSON (camelCase), e.g. in `cloud-builds` messages."""
    return str(json_format.MessageToJson(cloudbuild.Build.pb(build), indent=None))


class BuildStore:
    """Every build by id, kept as serialized snapshots (thread-safe) and as JSON under state_dir/builds."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._builds: dict[str, bytes] = {}

    def load(self) -> list[cloudbuild.Build]:
        """Read builds saved by an earlier run; return the ones it left unfinished."""
        unfinished = []
        for path in sorted(self._dir.glob("*.json")):
            build = cloudbuild.Build.wrap(json_format.Parse(path.read_text(encoding="utf-8"), cloudbuild.Build.pb()()))
            self._builds[build.id] = cloudbuild.Build.serialize(build)
            if build.status not in TERMINAL:
                unfinished.append(build)
        return unfinished

    def put(self, build: cloudbuild.Build) -> None:
        data = cloudbuild.Build.serialize(build)
        with self._lock:
            self._builds[build.id] = data
            with atomic_write(self._dir / f"{build.id}.json") as handle:
                handle.write(build_json(build))

    def get(self, build_id: str) -> cloudbuild.Build | None:
        with self._lock:
            data = self._builds.get(build_id)
        return None if data is None else cloudbuild.Build.deserialize(data)

    def all(self) -> list[cloudbuild.Build]:
        with self._lock:
            snapshots = list(self._builds.values())
        return [cloudbuild.Build.deserialize(data) for data in snapshots]
