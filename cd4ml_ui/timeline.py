"""A run's timeline by stage: which catalog stage produced each event, when it started and how long it took.

Stage names and their order come from the catalog (functions/cd4ml/catalog.yaml): an event is credited to the
stage named by its ``source`` (``…/functions/STAGE``, what the runtime stamps), else to the one stage whose
``emits`` lists its type. A stage's work starts when the event before its first one was recorded (the message
it consumed, or the last fact a tick stage waited on) and ends with its last event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cd4ml.catalog import Catalog, Stage
from cd4ml.events import parse_time

#: Who opens a run: not a stage of the catalog but the request (Cloud Scheduler, `cd4ml run`, start_on_data).
REQUEST = "request"


@dataclass(frozen=True)
class StageSpan:
    """One stage's part of a run: its events, its start and its end, as offsets from the run's start."""

    stage: str
    doc: str
    events: tuple[str, ...]
    start_s: float
    end_s: float
    started_at: str
    ended_at: str

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Timeline:
    """Every stage the run reached, in the order they started, and the chain stages it never reached."""

    spans: tuple[StageSpan, ...]
    total_s: float
    not_reached: tuple[str, ...]


def short(event_type: str) -> str:
    """``cd4ml.data.fetched.v1`` → ``data.fetched``."""
    return event_type.removeprefix("cd4ml.").removesuffix(".v1")


def chain_stages(cat: Catalog) -> tuple[Stage, ...]:
    """The catalog's stages that move a run (they emit run events), in catalog order; observers excluded."""
    return tuple(s for s in cat.stages if s.emits and not s.observer and "cd4ml.run.requested.v1" not in s.emits)


def stage_of(event: Mapping[str, Any], cat: Catalog) -> str:
    """The catalog stage that produced ``event``: by its source, else the only stage that emits its type."""
    named = str(event.get("source") or "").rsplit("/functions/", 1)
    names = {s.name for s in cat.stages}
    if len(named) == 2 and named[1] in names:
        return named[1]
    emitters = [s.name for s in chain_stages(cat) if event["type"] in s.emits]
    if event["type"] == "cd4ml.run.requested.v1" or not emitters:
        return REQUEST
    return emitters[0] if len(emitters) == 1 else " or ".join(emitters)


def _at(event: Mapping[str, Any]) -> datetime:
    return parse_time(str(event["time"]))


def _build_submitted(record: Mapping[str, Any]) -> datetime | None:
    """When the run's image build was submitted (Cloud Build's QUEUED, recorded under image.progress), if it was."""
    progress = (record.get("image") or {}).get("progress") or {}
    first = progress.get("QUEUED") or progress.get("WORKING")
    try:
        return parse_time(str(first)) if first else None
    except ValueError:
        return None


def _trigger_time(events: Sequence[Mapping[str, Any]], trigger: str) -> datetime | None:
    """When the run recorded the last event of type ``trigger`` (a stage's input), if it did."""
    times = [_at(e) for e in events if e["type"] == trigger]
    return times[-1] if times else None


def build(record: Mapping[str, Any], cat: Catalog) -> Timeline:
    """The run's timeline by stage (an empty one for a run with no event)."""
    events = sorted(record.get("events") or [], key=lambda e: str(e["time"]))
    if not events:
        return Timeline((), 0.0, tuple(s.name for s in chain_stages(cat)))
    origin = _at(events[0])
    docs = {s.name: s.doc for s in cat.stages}
    foreign = {s.name for s in cat.stages if s.foreign}
    submitted = _build_submitted(record)
    spans: dict[str, dict[str, Any]] = {}
    previous = events[0]
    for event in events:
        stage = stage_of(event, cat)
        began = _at(previous) if stage != REQUEST else _at(event)
        if stage in foreign and submitted is not None and began < submitted <= _at(event):
            began = submitted  # Cloud Build's and the registry's notices wait on the build, not on the stage before
        span = spans.setdefault(stage, {"events": [], "start": began, "end": _at(event)})
        span["events"].append(short(event["type"]))
        span["end"] = max(span["end"], _at(event))
        previous = event
    builder = next((s.name for s in chain_stages(cat) if "cd4ml.image.built.v1" in s.emits and not s.foreign), None)
    if submitted is not None and builder is not None and builder not in spans:
        # The stage that submits the build emits nothing when it does (its result comes back through Cloud Build's
        # messages): its part is from the event it consumed to the build's submission, recorded on the run.
        trigger = _trigger_time(events, cat.stage(builder).trigger)
        if trigger is not None and trigger <= submitted:
            spans[builder] = {"events": ["build submitted"], "start": trigger, "end": submitted}
    built = tuple(
        StageSpan(
            stage=name,
            doc=docs.get(name, "The run was requested (Cloud Scheduler, `cd4ml run` or new data)."),
            events=tuple(s["events"]),
            start_s=(s["start"] - origin).total_seconds(),
            end_s=(s["end"] - origin).total_seconds(),
            started_at=s["start"].strftime("%Y-%m-%d %H:%M:%S"),
            ended_at=s["end"].strftime("%H:%M:%S"),
        )
        for name, s in sorted(spans.items(), key=lambda kv: (kv[1]["start"], kv[1]["end"]))
    )
    total = (_at(events[-1]) - origin).total_seconds()
    reached = set(spans)
    return Timeline(built, total, tuple(s.name for s in chain_stages(cat) if s.name not in reached))


@dataclass(frozen=True)
class Bar:
    """A span drawn in the strip: its row, x and width in the SVG's user units."""

    span: StageSpan
    y: float
    x: float
    width: float


def bars(timeline: Timeline, width: float = 640.0, row: float = 22.0) -> Sequence[Bar]:
    """The Gantt strip's geometry: one row per stage, x by start offset, width by duration (at least 2 units)."""
    scale = width / timeline.total_s if timeline.total_s > 0 else 0.0
    return [
        Bar(span, y=i * row, x=span.start_s * scale, width=max(2.0, span.duration_s * scale))
        for i, span in enumerate(timeline.spans)
    ]
