"""Typed views of the events' data, so stage logic reads fields, not dict keys.

Each is built from an event whose data already passed its JSON Schema, so construction cannot fail on
shape; ``to_dict`` gives back what the event (and the run ledger) carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from cd4ml.events import Event, parse_time
from cd4ml.snapshot import Dataset


@dataclass(frozen=True)
class Artifact:
    """A file in Cloud Storage and its sha256: the trained model."""

    uri: str
    sha256: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Artifact:
        return cls(uri=str(data["uri"]), sha256=str(data["sha256"]))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class RunRequested:
    """cd4ml.run.requested.v1: which model, and for which schedule slot when the requester knows it."""

    model: str
    scheduled_time: datetime | None
    trigger: str
    no_cache: bool = False  # train, build and deliver anew (``cd4ml run --no-cache``)

    @classmethod
    def of(cls, event: Event) -> RunRequested:
        when = event.data.get("scheduled_time")
        return cls(
            model=str(event.data["model"]),
            scheduled_time=parse_time(when) if when else None,
            trigger=str(event.data.get("trigger", "manual")),
            no_cache=bool(event.data.get("no_cache", False)),
        )


@dataclass(frozen=True)
class DataFetched:
    """cd4ml.data.fetched.v1: the run's dataset snapshot."""

    model: str
    dataset: Dataset

    @classmethod
    def of(cls, event: Event) -> DataFetched:
        d = event.data["dataset"]
        return cls(
            model=str(event.data["model"]),
            dataset=Dataset(
                uri=str(d["uri"]),
                sha256=str(d["sha256"]),
                rows=int(d["rows"]),
                bytes=int(d["bytes"]),
                files=int(d["files"]),
            ),
        )


@dataclass(frozen=True)
class TrainingCompleted:
    """cd4ml.training.completed.v1: the job and the model it left."""

    model: str
    job: str
    model_artifact: Artifact
    reused_from: str = ""  # the run whose training was reused (training cache hit)

    @classmethod
    def of(cls, event: Event) -> TrainingCompleted:
        return cls(
            model=str(event.data["model"]),
            job=str(event.data["job"]),
            model_artifact=Artifact.from_dict(event.data["model_artifact"]),
            reused_from=str(event.data.get("reused_from", "")),
        )


@dataclass(frozen=True)
class EvaluationPassed:
    """cd4ml.evaluation.passed.v1 (and delivery.cleared.v1): the candidate that passed the gate, with its metrics."""

    model: str
    model_artifact: Artifact
    metrics: Mapping[str, float]

    @classmethod
    def of(cls, event: Event) -> EvaluationPassed:
        return cls(
            model=str(event.data["model"]),
            model_artifact=Artifact.from_dict(event.data["model_artifact"]),
            metrics={str(k): float(v) for k, v in event.data["metrics"].items()},
        )


#: cd4ml.delivery.cleared.v1 carries the same candidate as evaluation.passed (no approval needed, or approved).
DeliveryCleared = EvaluationPassed


@dataclass(frozen=True)
class ImagePushed:
    """cd4ml.image.pushed.v1: the serving image by digest."""

    model: str
    reference: str
    tag: str

    @classmethod
    def of(cls, event: Event) -> ImagePushed:
        return cls(
            model=str(event.data["model"]), reference=str(event.data["reference"]), tag=str(event.data.get("tag", ""))
        )
