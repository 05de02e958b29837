"""The job table of the local Vertex AI stand-in: records, state transitions, scheduling, persistence.

Each CustomJob is kept as the ``aiplatform_v1.CustomJob`` value Vertex would return and saved as
JSON in ``STATE_DIR/customJobs/{id}.json`` at every change, next to its work directory
``STATE_DIR/customJobs/{id}/`` (packages, stdout.log, stderr.log). Jobs run on a pool of at most
``max_concurrent`` threads; the others wait in JOB_STATE_QUEUED. A restarted server answers for
every saved job; one that was still in flight when its server died is marked failed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from google.cloud import aiplatform_v1
from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from local_emulator.vertex.job import JobContext, Outcome
from local_emulator.vertex.requests import (
    JobFilter,
    JobNotCancellable,
    JobNotFound,
    Location,
    ServiceClosing,
    check_custom_job,
    parse_job_name,
)
from local_emulator.vertex.runner import run_job

_log = logging.getLogger("local_emulator.vertex")

JobState = aiplatform_v1.JobState
CustomJob = aiplatform_v1.CustomJob

TERMINAL_STATES = frozenset({JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED})
_RECORDS = "customJobs"


@dataclass(frozen=True)
class _Entry:
    """One job: its record (mutated only under the table lock) and its cancel signal."""

    job: CustomJob
    cancel: threading.Event = field(default_factory=threading.Event)


class JobTable:
    """Creates, runs, lists and cancels CustomJobs; thread-safe."""

    def __init__(
        self,
        state_dir: Path,
        max_concurrent: int,
        base_env: Mapping[str, str],
        *,
        cache_dir: Path,
        registry: str | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
        self._dir = state_dir / _RECORDS
        self._dir.mkdir(parents=True, exist_ok=True)
        self._base_env = dict(base_env)
        self._cache_dir = cache_dir
        self._registry = registry
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._last_id = 0
        self._closing = False
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="vertex-job")
        self._load()

    def create(self, where: Location, job: CustomJob) -> CustomJob:
        """Validate and queue a new job; return it as stored (name, state, times set)."""
        check_custom_job(job, self._registry)
        record = _copy(job)
        now = _now()
        with self._lock:
            if self._closing:
                raise ServiceClosing
            self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
            job_id = str(self._last_id)
            record.name = where.job_name(job_id)
            record.state = JobState(JobState.JOB_STATE_QUEUED)
            record.create_time = now
            record.update_time = now
            entry = _Entry(record)
            self._entries[job_id] = entry
            self._save(job_id, record)
            _log.info(
                "job created",
                extra={"job": record.name, "display_name": record.display_name, "labels": dict(record.labels)},
            )
            # Submitted under the lock, so close() either refuses this job or sees it queued.
            self._pool.submit(self._run, job_id, where, entry)
            return _copy(record)

    def get(self, name: str) -> CustomJob:
        """The job with this resource name, or JobNotFound."""
        with self._lock:
            return _copy(self._entry(name).job)

    def select(self, where: Location, job_filter: JobFilter) -> list[CustomJob]:
        """The jobs of a location that match the filter, oldest first."""
        prefix = where.parent + "/"
        with self._lock:
            return [
                _copy(entry.job)
                for _, entry in sorted(self._entries.items(), key=lambda item: int(item[0]))
                if entry.job.name.startswith(prefix) and job_filter.matches(entry.job)
            ]

    def cancel(self, name: str) -> None:
        """Ask a job to stop: a queued one is cancelled at once, a started one once its trainer is killed."""
        with self._lock:
            entry = self._entry(name)
            state = entry.job.state
            if state in TERMINAL_STATES:
                raise JobNotCancellable(name, JobState(state).name)
            entry.cancel.set()
            if state == JobState.JOB_STATE_QUEUED:
                self._finish(
                    entry.job, Outcome(JobState.JOB_STATE_CANCELLED, code_pb2.CANCELLED, "The job was cancelled.")
                )
            elif state != JobState.JOB_STATE_CANCELLING:
                self._transition(entry.job, JobState.JOB_STATE_CANCELLING)

    def close(self) -> None:
        """Cancel every unfinished job, kill the trainers' process groups and wait for the workers."""
        reason = "The job was cancelled because the local Vertex AI stand-in shut down."
        with self._lock:
            self._closing = True
            for entry in self._entries.values():
                entry.cancel.set()
                if entry.job.state == JobState.JOB_STATE_QUEUED:
                    self._finish(entry.job, Outcome(JobState.JOB_STATE_CANCELLED, code_pb2.CANCELLED, reason))
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, job_id: str, where: Location, entry: _Entry) -> None:
        with self._lock:
            if entry.job.state != JobState.JOB_STATE_QUEUED:
                return  # cancelled while queued
            self._transition(entry.job, JobState.JOB_STATE_PENDING)
            context = JobContext(
                job_id,
                where.project,
                where.location,
                self._dir / job_id,
                _copy(entry.job),
                self._base_env,
                self._cache_dir,
            )

        def on_running() -> None:
            with self._lock:
                if entry.job.state == JobState.JOB_STATE_PENDING:
                    entry.job.start_time = _now()
                    self._transition(entry.job, JobState.JOB_STATE_RUNNING)

        try:
            outcome = run_job(context, entry.cancel, on_running)
        except Exception as exc:  # a bug or an environment problem: the job must still end
            _log.exception("job crashed in the stand-in", extra={"job": entry.job.name})
            outcome = Outcome(
                JobState.JOB_STATE_FAILED,
                code_pb2.INTERNAL,
                f"The local Vertex AI stand-in failed to run the job: {exc!r}",
            )
        with self._lock:
            if outcome.state == JobState.JOB_STATE_CANCELLED and self._closing:
                outcome = Outcome(
                    outcome.state, outcome.code, "The job was cancelled because the local Vertex AI stand-in shut down."
                )
            self._finish(entry.job, outcome)

    def _entry(self, name: str) -> _Entry:
        parsed = parse_job_name(name)
        entry = self._entries.get(parsed.job_id)
        if entry is None or entry.job.name != name:
            raise JobNotFound(name)
        return entry

    def _transition(self, job: CustomJob, state: int) -> None:
        job.state = JobState(state)
        job.update_time = _now()
        self._save(job.name.rsplit("/", 1)[1], job)
        _log.info("job state", extra={"job": job.name, "state": job.state.name})

    def _finish(self, job: CustomJob, outcome: Outcome) -> None:
        job.end_time = _now()
        if outcome.state != JobState.JOB_STATE_SUCCEEDED:
            job.error = status_pb2.Status(code=outcome.code, message=outcome.message)
        self._transition(job, outcome.state)
        if outcome.state == JobState.JOB_STATE_FAILED:
            _log.warning("job failed", extra={"job": job.name, "error": outcome.message})

    def _save(self, job_id: str, job: CustomJob) -> None:
        path = self._dir / f"{job_id}.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(CustomJob.to_json(job, use_integers_for_enums=False), encoding="utf-8")
        os.replace(temporary, path)

    def _load(self) -> None:
        """Read the saved jobs; fail those that were in flight when the previous server stopped."""
        for path in sorted(self._dir.glob("*.json")):
            job = CustomJob.from_json(path.read_text(encoding="utf-8"), ignore_unknown_fields=True)
            job_id = path.stem
            self._entries[job_id] = _Entry(job)
            self._last_id = max(self._last_id, int(job_id))
            if job.state not in TERMINAL_STATES:
                self._finish(
                    job,
                    Outcome(
                        JobState.JOB_STATE_FAILED,
                        code_pb2.ABORTED,
                        f"The local Vertex AI stand-in stopped while the job was {JobState(job.state).name}.",
                    ),
                )
        if self._entries:
            _log.info("jobs loaded", extra={"count": len(self._entries), "state_dir": str(self._dir)})


def _copy(job: CustomJob) -> CustomJob:
    copied: CustomJob = CustomJob.deserialize(CustomJob.serialize(job))
    return copied


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp
