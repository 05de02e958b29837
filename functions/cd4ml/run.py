"""The run record ``runs/{run_id}`` (schemas/run.schema.json) as a frozen, typed value.

``Run.from_document`` / ``Run.to_document`` are symmetric, like ``Event.from_message`` / ``Event.to_message``:
stages read typed fields, the ledger stores the document. Every property of schemas/run.schema.json is a field
(a test checks it); fields this version does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from cd4ml.payloads import Artifact
from cd4ml.snapshot import Dataset

#: The statuses a run never leaves.
#: "skipped": the run's model was the champion's, byte for byte; nothing was delivered (catalog ``run.skipped_on``).
TERMINAL = ("succeeded", "failed", "rejected", "skipped")
#: A running run that waits for a person's decision (catalog ``run.awaits_on``); not ended.
AWAITING_APPROVAL = "awaiting_approval"
_RUN_ID = re.compile(r"^(?P<model>[a-z][a-z0-9-]{0,39})-(?P<stamp>\d{8}t\d{6}z)$")


@dataclass(frozen=True, order=True)
class RunId:
    """``MODEL-YYYYMMDDtHHMMSSz``: a model and the schedule slot it runs for; the same slot is the same run."""

    model: str
    scheduled_time: datetime

    @classmethod
    def of(cls, model: str, scheduled_time: datetime) -> RunId:
        return cls(model, scheduled_time.astimezone(UTC).replace(microsecond=0))

    @classmethod
    def parse(cls, text: str) -> RunId:
        """The run id ``text``; ValueError naming the expected form otherwise."""
        match = _RUN_ID.match(text)
        if not match:
            raise ValueError(f"{text[:80]!r} is not a run id (MODEL-YYYYMMDDtHHMMSSz)")
        stamp = datetime.strptime(match["stamp"], "%Y%m%dt%H%M%Sz").replace(tzinfo=UTC)
        return cls(match["model"], stamp)

    def __str__(self) -> str:
        return f"{self.model}-{self.scheduled_time.astimezone(UTC):%Y%m%dt%H%M%Sz}"


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.match(text))


@dataclass(frozen=True)
class Training:
    job: str = ""
    state: str = ""
    active: bool = False
    error: str = ""
    submitted_at: str = ""
    #: When watch_training first failed to read the job (Vertex unreachable); "" once it reads it again.
    unreadable_since: str = ""


@dataclass(frozen=True)
class Evaluation:
    passed: bool
    metrics: Mapping[str, float]
    gate: Mapping[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Image:
    build_id: str = ""
    tag: str = ""
    context: str = ""
    status: str = ""
    reference: str = ""
    digest: str = ""
    log_url: str = ""
    error: str = ""
    progress: Mapping[str, str] = field(default_factory=dict)
    #: Registry pushes noticed before the build reported (on_push), by ``d<digest hex>``: digest_ref, tag, at.
    pushes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def build_ended(self) -> bool:
        """Cloud Build reported a terminal status (or the build was never submitted)."""
        return self.status in BUILD_ENDED


#: Cloud Build's terminal statuses, and MODEL_CHANGED (build_image refused to build).
BUILD_ENDED = frozenset({"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED", "MODEL_CHANGED"})


@dataclass(frozen=True)
class Canary:
    event_id: str = ""
    execution_id: str = ""
    application: str = ""
    pipeline: str = ""
    reason: str = ""
    active: bool = False
    triggered_at: str = ""
    deadline: str = ""
    verdict: str = ""
    stage: str = ""
    status: str = ""
    ended_at: str = ""
    without_canary: str = ""  # the manifest has no canary: why the run promoted on its build alone


@dataclass(frozen=True)
class Promotion:
    alias: str = ""
    reference: str = ""
    digest: str = ""
    previous_run_id: str = ""
    previous_digest: str = ""
    at: str = ""


@dataclass(frozen=True)
class Approval:
    """The approval gate: what the approvers were shown, who decided what and when, and who was refused."""

    approvers: tuple[str, ...] = ()
    requested_at: str = ""
    expires_at: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    gate: Mapping[str, Any] = field(default_factory=dict)
    decision: str = ""  # approve | reject | expired
    by: str = ""
    reason: str = ""
    decided_at: str = ""
    refused: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class RunError:
    stage: str
    message: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Run:
    """One run: what was requested, what each stage established, and how it ended."""

    run_id: str
    model: str
    status: str
    created_at: str
    updated_at: str
    events: tuple[Mapping[str, Any], ...] = ()
    trigger: str = ""
    scheduled_time: str = ""
    manifest: Mapping[str, Any] = field(default_factory=dict)
    dataset: Dataset | None = None
    training: Training | None = None
    model_artifact: Artifact | None = None
    evaluation: Evaluation | None = None
    image: Image = field(default_factory=Image)
    canary: Canary | None = None
    promotion: Promotion | None = None
    approval: Approval | None = None
    error: RunError | None = None
    #: Cache decisions (``enabled``, ``training``, ``image``, ``skipped``, ``disabled_by``): cd4ml.cache.
    cache: Mapping[str, Any] = field(default_factory=dict)
    #: on_dead_letter's mark (pending, stage, event_id, at, reason): cd4ml.stages.dead_letters.
    dead_letter: Mapping[str, Any] = field(default_factory=dict)
    #: The last error a failed delivery saw (stage, error, at), named when the run is ended from a dead letter.
    last_failure: Mapping[str, Any] = field(default_factory=dict)
    #: Notices posted, per event and channel: cd4ml.stages.notify.
    notifications: Mapping[str, Any] = field(default_factory=dict)
    #: The smoke test's result, as the build reported it.
    smoke: Mapping[str, Any] = field(default_factory=dict)
    #: Events recorded and not yet published, with their data (Context.conclude), and those published.
    outbox: tuple[Mapping[str, Any], ...] = ()
    outbox_pending: bool = False
    published: tuple[str, ...] = ()
    #: Messages a stage rejected for this run (the last 20), and how many in all.
    rejected_messages: tuple[Mapping[str, Any], ...] = ()
    rejected_count: int = 0
    #: Fields this version does not know (a newer writer's), kept and written back; no stage reads them.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    @property
    def id(self) -> RunId:
        return RunId.parse(self.run_id)

    def saw(self, event_id: str) -> bool:
        return any(e.get("id") == event_id for e in self.events)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Run:
        known = {f.name for f in fields(cls)}
        d = dict(doc)
        dataset = d.get("dataset")
        evaluation = d.get("evaluation")
        error = d.get("error")
        return cls(
            run_id=str(d["run_id"]),
            model=str(d["model"]),
            status=str(d["status"]),
            created_at=str(d.get("created_at", "")),
            updated_at=str(d.get("updated_at", "")),
            events=tuple(dict(e) for e in d.get("events") or ()),
            trigger=str(d.get("trigger", "")),
            scheduled_time=str(d.get("scheduled_time", "")),
            manifest=dict(d.get("manifest") or {}),
            dataset=Dataset(
                uri=dataset["uri"],
                sha256=dataset["sha256"],
                rows=int(dataset["rows"]),
                bytes=int(dataset["bytes"]),
                files=int(dataset.get("files", 0)),
            )
            if dataset
            else None,
            training=_sub(Training, d.get("training")),
            model_artifact=Artifact.from_dict(d["model_artifact"]) if d.get("model_artifact") else None,
            evaluation=Evaluation(
                passed=bool(evaluation["passed"]),
                metrics=dict(evaluation.get("metrics") or {}),
                gate=dict(evaluation.get("gate") or {}),
                reasons=tuple(evaluation.get("reasons") or ()),
            )
            if evaluation
            else None,
            image=_sub(Image, d.get("image")) or Image(),
            canary=_sub(Canary, d.get("canary")),
            promotion=_sub(Promotion, d.get("promotion")),
            approval=_sub(Approval, d.get("approval")),
            error=RunError(
                stage=str(error.get("stage", "")),
                message=str(error.get("message", "")),
                problems=tuple(error.get("problems") or ()),
            )
            if error
            else None,
            cache=dict(d.get("cache") or {}),
            dead_letter=dict(d.get("dead_letter") or {}),
            last_failure=dict(d.get("last_failure") or {}),
            notifications=dict(d.get("notifications") or {}),
            smoke=dict(d.get("smoke") or {}),
            outbox=tuple(dict(e) for e in d.get("outbox") or ()),
            outbox_pending=bool(d.get("outbox_pending", False)),
            published=tuple(str(e) for e in d.get("published") or ()),
            rejected_messages=tuple(dict(r) for r in d.get("rejected_messages") or ()),
            rejected_count=int(d.get("rejected_count") or 0),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "run_id": self.run_id,
            "model": self.model,
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "events": [dict(e) for e in self.events],
        }
        optional: dict[str, Any] = {
            "trigger": self.trigger,
            "scheduled_time": self.scheduled_time,
            "manifest": dict(self.manifest),
            "dataset": self.dataset.to_dict() if self.dataset else None,
            "training": _doc(self.training),
            "model_artifact": self.model_artifact.to_dict() if self.model_artifact else None,
            "evaluation": {
                "passed": self.evaluation.passed,
                "metrics": dict(self.evaluation.metrics),
                "gate": dict(self.evaluation.gate),
                "reasons": list(self.evaluation.reasons),
            }
            if self.evaluation
            else None,
            "image": _doc(self.image),
            "canary": _doc(self.canary),
            "promotion": _doc(self.promotion),
            "approval": _doc(self.approval),
            "error": {"stage": self.error.stage, "message": self.error.message, "problems": list(self.error.problems)}
            if self.error
            else None,
        }
        optional.update(
            {
                "cache": dict(self.cache),
                "dead_letter": dict(self.dead_letter),
                "last_failure": dict(self.last_failure),
                "notifications": dict(self.notifications),
                "smoke": dict(self.smoke),
                "outbox": [dict(e) for e in self.outbox],
                "outbox_pending": self.outbox_pending,
                "published": list(self.published),
                "rejected_messages": [dict(r) for r in self.rejected_messages],
                "rejected_count": self.rejected_count,
            }
        )
        doc.update({k: v for k, v in optional.items() if v})
        doc.update(self.extra)
        return doc


def _sub(cls: Any, raw: Any) -> Any:
    """A sub-record from its mapping, ignoring keys it does not declare (they stay in the document)."""
    if not raw:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dict(raw).items() if k in names})


def _doc(value: Any) -> dict[str, Any] | None:
    """A sub-record's mapping without empty fields, or None."""
    if value is None:
        return None
    out = {f.name: getattr(value, f.name) for f in fields(value) if getattr(value, f.name) not in ("", None, {})}
    return out or None
