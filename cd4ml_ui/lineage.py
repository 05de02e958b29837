"""A run's lineage as a chain of nodes: dataset → training job → model → build → image → canary → alias move.

Each node carries the identifiers that name it in Google Cloud (and in Spinnaker), read from the run record
(schemas/run.schema.json); a node the run never reached is marked so, and a reused result names its twin run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Node:
    """One step of the lineage: its kind, whether the run reached it, its identifiers (label, value) and a twin."""

    kind: str
    reached: bool
    identifiers: tuple[tuple[str, str], ...]
    twin: str | None = None


def _ids(*pairs: tuple[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((label, str(value)) for label, value in pairs if value not in (None, "", [], {}))


def nodes(record: Mapping[str, Any]) -> tuple[Node, ...]:
    """The seven nodes of the run's lineage, in order."""
    dataset = record.get("dataset") or {}
    training = record.get("training") or {}
    artifact = record.get("model_artifact") or {}
    image = record.get("image") or {}
    canary = record.get("canary") or {}
    promotion = record.get("promotion") or {}
    cache = record.get("cache") or {}
    trained_from = (cache.get("training") or {}).get("reused_from")
    built_from = (cache.get("image") or {}).get("reused_from")
    return (
        Node(
            "dataset",
            bool(dataset),
            _ids(("sha256", dataset.get("sha256")), ("uri", dataset.get("uri")), ("rows", dataset.get("rows"))),
        ),
        Node(
            "training job",
            bool(training.get("job")) or bool(trained_from),
            _ids(("job", training.get("job")), ("state", training.get("state"))),
            trained_from,
        ),
        Node("model", bool(artifact), _ids(("sha256", artifact.get("sha256")), ("uri", artifact.get("uri")))),
        Node(
            "build",
            bool(image.get("build_id")) or bool(built_from),
            _ids(("build", image.get("build_id")), ("status", image.get("status")), ("log", image.get("log_url"))),
            built_from,
        ),
        Node(
            "image",
            bool(image.get("digest")),
            _ids(("digest", image.get("digest")), ("reference", image.get("reference"))),
        ),
        Node(
            "canary execution",
            bool(canary.get("execution_id")),
            _ids(
                ("execution", canary.get("execution_id")),
                ("pipeline", canary.get("pipeline")),
                ("verdict", canary.get("verdict") or canary.get("status")),
            ),
        ),
        Node(
            "alias move",
            bool(promotion.get("digest")),
            _ids(
                ("alias", promotion.get("alias")),
                ("digest", promotion.get("digest")),
                ("at", promotion.get("at")),
                ("was", promotion.get("previous_run_id")),
                ("superseded by", promotion.get("superseded_by")),
            ),
        ),
    )
