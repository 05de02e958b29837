"""Target 3: 100 concurrent runs all finish, nothing is duplicated, and per-run overhead ≤ 1.2 × that of 10 runs.

A batch publishes N run.requested events at once (distinct scheduled times, so distinct run ids) and waits
for every run to end. Then:

- finished: every run succeeded (canary.triggered).
- duplicates, counted where they would happen: training jobs at the local Vertex AI (ListCustomJobs,
  ``labels.cd4ml_run_id="RUN"``), builds at the Cloud Build stand-in (ListBuilds, ``tags="cd4ml-run-RUN"``),
  each exactly one per run; and each event type at most once in a run's ledger record, the eight
  milestones exactly once.
- per-run overhead: the mean over the batch's runs of (canary.triggered − run.requested, ledger times) minus
  the run's external work: its Vertex job from create to end (queue included: the stand-in runs two jobs at
  once, which is not cd4ml's doing) and its build from create to finish (likewise, two workers). What is
  left is cd4ml's: the snapshot, every Pub/Sub hop, ledger transactions and redeliveries, the watch tick's
  polling, the Gate calls. The batch wall time per run is reported too, for context.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from benchmarks.pipeline import Pipeline, say
from benchmarks.report import Check, Section, Summary
from cd4ml import events
from cd4ml.events import parse_time
from cd4ml.stages.delivery import RUN_TAG
from cd4ml.stages.training import RUN_LABEL

TARGET = "concurrent runs"
LIMIT = 1.2
MILESTONES = (
    events.RUN_REQUESTED,
    events.DATA_FETCHED,
    events.TRAINING_SUBMITTED,
    events.TRAINING_COMPLETED,
    events.EVALUATION_PASSED,
    events.IMAGE_BUILT,
    events.IMAGE_PUSHED,
    events.CANARY_TRIGGERED,
)
#: The parts of a run's overhead, each between two instants of the run (ledger, Vertex and Cloud Build times).
SEGMENTS = (
    "requested → job created",
    "job ended → training.completed",
    "training.completed → build created",
    "build finished → image.built",
    "image.built → canary",
)


@dataclass(frozen=True)
class RunTiming:
    """Where one run's time went, in seconds."""

    run_id: str
    total_s: float
    job_s: float
    build_s: float
    segments: tuple[float, ...]

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.job_s - self.build_s


@dataclass(frozen=True)
class Batch:
    """A batch of concurrent runs and what was found about it."""

    label: str
    size: int
    wall_s: float
    succeeded: int
    timings: tuple[RunTiming, ...]
    unfinished: tuple[str, ...]
    """Runs that did not succeed, each with its status and error."""
    duplicates: tuple[str, ...]
    """Effects or events found more than once (or a milestone missing from a run that succeeded)."""

    @property
    def overhead(self) -> Summary:
        return Summary.of(t.overhead_s for t in self.timings)


def run_batch(pipeline: Pipeline, size: int, timeout: float) -> Batch:
    """Request ``size`` runs at once, wait for them, then count effects and time each run."""
    started = time.monotonic()
    run_ids = pipeline.request(size)
    records = pipeline.wait(run_ids, timeout)
    ended = [
        parse_time(e["time"])
        for r in records.values()
        for e in r.get("events", [])
        if e["type"] == events.CANARY_TRIGGERED
    ]
    first = min(parse_time(r["events"][0]["time"]) for r in records.values() if r.get("events"))
    wall = (max(ended) - first).total_seconds() if ended else time.monotonic() - started
    unfinished: list[str] = []
    succeeded = [r for r in run_ids if (records.get(r) or {}).get("status") == "succeeded"]
    for run_id in run_ids:
        run = records.get(run_id)
        if run is None or run.get("status") != "succeeded":
            unfinished.append(
                f"{run_id} {'never opened' if run is None else run.get('status')}: "
                f"{(run or {}).get('error', {}).get('message', 'no error recorded')}"
            )
    jobs = _jobs(pipeline, run_ids)
    builds = _builds(pipeline, run_ids)
    timings = []
    duplicates: list[str] = []
    for run_id in run_ids:
        duplicates += _duplicates(run_id, records.get(run_id), jobs.get(run_id, []), builds.get(run_id, []))
        if run_id in succeeded and len(jobs.get(run_id, [])) == 1 and len(builds.get(run_id, [])) == 1:
            timings.append(_timing(records[run_id], jobs[run_id][0], builds[run_id][0]))
    return Batch(f"{size} runs", size, wall, len(succeeded), tuple(timings), tuple(unfinished), tuple(duplicates))


def _jobs(pipeline: Pipeline, run_ids: list[str]) -> dict[str, list[Any]]:
    return {
        r: list(
            pipeline.jobs.list_custom_jobs(
                request={"parent": pipeline.settings.location, "filter": f'labels.{RUN_LABEL}="{r}"'}
            )
        )
        for r in run_ids
    }


def _builds(pipeline: Pipeline, run_ids: list[str]) -> dict[str, list[Any]]:
    return {
        r: list(pipeline.builds.list_builds(project_id=pipeline.settings.project, filter=f'tags="{RUN_TAG}{r}"'))
        for r in run_ids
    }


def _duplicates(run_id: str, run: dict[str, Any] | None, jobs: list[Any], builds: list[Any]) -> list[str]:
    """What a run has more than once; for a run that succeeded, also what it should have once and has not."""
    succeeded = run is not None and run.get("status") == "succeeded"
    problems = [
        f"{run_id}: {found} {what}"
        for what, found in (("training jobs at Vertex", len(jobs)), ("builds at Cloud Build", len(builds)))
        if found > 1 or (succeeded and found != 1)
    ]
    seen = [e["type"] for e in (run or {}).get("events", [])]
    for type_ in sorted(set(seen) | set(MILESTONES)):
        count = seen.count(type_)
        if count > 1 or (succeeded and type_ in MILESTONES and count != 1):
            problems.append(f"{run_id}: {type_} {count} times in the ledger")
    return problems


def _timing(run: dict[str, Any], job: Any, build: Any) -> RunTiming:
    times: dict[str, datetime] = {e["type"]: parse_time(e["time"]) for e in run["events"]}
    start, end = times[events.RUN_REQUESTED], times[events.CANARY_TRIGGERED]
    job_created, job_ended = job.create_time, job.end_time
    build_created, build_finished = build.create_time, build.finish_time
    return RunTiming(
        run_id=run["run_id"],
        total_s=(end - start).total_seconds(),
        job_s=(job_ended - job_created).total_seconds(),
        build_s=(build_finished - build_created).total_seconds(),
        segments=tuple(
            span.total_seconds()
            for span in (
                job_created - start,
                times[events.TRAINING_COMPLETED] - job_ended,
                build_created - times[events.TRAINING_COMPLETED],
                times[events.IMAGE_BUILT] - build_finished,
                end - times[events.IMAGE_BUILT],
            )
        ),
    )


def measure(pipeline: Pipeline, small: int, large: int, timeout: float, repeats: int = 2) -> Section:
    """The baseline batch (``repeats`` times), then the large one; the checks on the large one against the baseline."""
    bases = []
    for n in range(repeats):
        say(f"concurrent runs: {small} at once ({n + 1}/{repeats})")
        bases.append(run_batch(pipeline, small, timeout))
        say(f"concurrent runs: {small} done in {bases[-1].wall_s:.0f} s")
    base = Batch(
        f"{small} runs, {repeats} batches pooled",
        small,
        statistics.fmean(b.wall_s for b in bases),
        sum(b.succeeded for b in bases),
        tuple(t for b in bases for t in b.timings),
        tuple(p for b in bases for p in b.unfinished),
        tuple(p for b in bases for p in b.duplicates),
    )
    say(f"concurrent runs: {large} at once")
    big = run_batch(pipeline, large, timeout)
    say(f"concurrent runs: {large} done in {big.wall_s:.0f} s")
    ratio = big.overhead.mean / base.overhead.mean
    checks = (
        Check(
            TARGET,
            f"{large} runs: all succeeded",
            f"{big.succeeded}/{large}",
            f"{large}/{large}",
            big.succeeded == large,
            value=big.succeeded,
            limit_value=large,
        ),
        Check(
            TARGET,
            f"{large} runs: nothing duplicated",
            f"{len(big.duplicates)} duplicates",
            "0",
            not big.duplicates,
            value=len(big.duplicates),
            limit_value=0,
        ),
        Check(
            TARGET,
            f"per-run overhead {large} / {small} runs",
            f"{ratio:.2f} ({big.overhead.mean:.2f} / {base.overhead.mean:.2f} s)",
            f"≤ {LIMIT:.1f}",
            ratio <= LIMIT,
            value=ratio,
            limit_value=LIMIT,
        ),
    )
    notes = [
        f"baseline: {repeats} batches of {small} (overhead means "
        + ", ".join(f"{b.overhead.mean:.2f}" for b in bases)
        + " s), pooled"
    ]
    for batch in (base, big):
        notes += [
            f"{batch.label}: {batch.succeeded} succeeded; first request → last canary {batch.wall_s:.1f} s "
            f"({batch.wall_s / batch.size:.2f} s a run)",
            f"  overhead   {batch.overhead.text('s', 2)}",
            f"  end to end {Summary.of(t.total_s for t in batch.timings).text('s', 2)}",
            f"  Vertex job {Summary.of(t.job_s for t in batch.timings).text('s', 2)} (create → end, queue included)",
            f"  build      {Summary.of(t.build_s for t in batch.timings).text('s', 2)} (create → finish, queue included)",
        ]
        for i, name in enumerate(SEGMENTS):
            notes.append(
                f"  overhead part {name + ':':36s} {Summary.of(t.segments[i] for t in batch.timings).text('s', 2)}"
            )
        problems = [*batch.unfinished, *batch.duplicates]
        notes += [f"  problem: {p}" for p in problems[:20]]
        if len(problems) > 20:
            notes.append(f"  … and {len(problems) - 20} more problems (all in the JSON)")
    return Section(
        target=TARGET,
        definition=(
            "per-run overhead = mean over the runs of (canary.triggered − run.requested) − Vertex job "
            f"(create→end) − build (create→finish); baseline pooled over {repeats} batches of {small}; "
            "duplicates counted at Vertex, Cloud Build and the ledger"
        ),
        checks=checks,
        notes=tuple(notes),
        data={"baseline_batches": [_data(b) for b in bases], f"batch_{large}": _data(big), "ratio": ratio},
    )


def _data(batch: Batch) -> dict[str, Any]:
    return {
        "label": batch.label,
        "size": batch.size,
        "wall_s": round(batch.wall_s, 3),
        "succeeded": batch.succeeded,
        "overhead_mean_s": round(batch.overhead.mean, 3),
        "overhead_p50_s": round(batch.overhead.p50, 3),
        "overhead_max_s": round(batch.overhead.max, 3),
        "segments_mean_s": {
            name: round(statistics.fmean(t.segments[i] for t in batch.timings), 3) if batch.timings else None
            for i, name in enumerate(SEGMENTS)
        },
        "unfinished": list(batch.unfinished),
        "duplicates": list(batch.duplicates),
        "runs": [
            {
                "run_id": t.run_id,
                "total_s": round(t.total_s, 3),
                "job_s": round(t.job_s, 3),
                "build_s": round(t.build_s, 3),
                "overhead_s": round(t.overhead_s, 3),
                "segments_s": [round(s, 3) for s in t.segments],
            }
            for t in batch.timings
        ],
    }
