"""What a stage's outcome does to a run record: status rules, event de-duplication, champion promotion.

Pure: ``apply`` takes the current document and a ``Change`` and returns the updates to write. The ledger
applies it in one optimistic read-apply-write (``Ledger._swap``), so the rules that matter most are unit-tested without
Firestore.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cd4ml import catalog
from cd4ml.run import AWAITING_APPROVAL, TERMINAL


@dataclass(frozen=True)
class Change:
    """What a stage established about a run: an event seen, fields (dotted paths), an error, a forced status."""

    event: Mapping[str, Any] | None = None  # Event.summary()
    fields: Mapping[str, Any] = field(default_factory=dict)
    error: Mapping[str, Any] | None = None
    status: str | None = None
    #: The whole event (summary + data), kept in the run's ``outbox`` until it is published (``Ledger.published``).
    outbox: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Applied:
    """The updates to write (dotted paths), the record after them, and the champion to set, if any."""

    updates: Mapping[str, Any]
    record: Mapping[str, Any]
    champion: Mapping[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.updates)


def status_after(current: str, event_type: str) -> str:
    """The run status once ``event_type`` happened; a finished run stays finished."""
    if current in TERMINAL:
        return current
    cat = catalog.load()
    if event_type == cat.succeeded_on:
        return "succeeded"
    if event_type in cat.failed_on:
        return "failed"
    if event_type in cat.skipped_on:
        return "skipped"
    if event_type in cat.rejected_on:
        return "rejected"
    if event_type in cat.awaits_on:
        return AWAITING_APPROVAL
    if current == AWAITING_APPROVAL:
        return "running"  # a decision was applied (delivery.cleared): the run goes on
    return current


def apply(current: Mapping[str, Any], change: Change, stamp: str) -> Applied:
    """The effect of ``change`` on the run document ``current`` at time ``stamp``.

    - An event already recorded (same id) changes nothing: redeliveries are no-ops.
    - An ended run keeps its status and its first error; later facts are still recorded.
    - The event's type moves the status (catalog ``run.succeeded_on`` / ``failed_on``), or ``status`` forces one.
    - The run that succeeds becomes its model's champion, with the metrics and model it was judged on.
    - A new event with ``outbox`` joins the run's outbox (and ``outbox_pending``) until it is published.
    """
    status = str(current.get("status", "running"))
    updates: dict[str, Any] = dict(change.fields)
    new_status = change.status or status
    if change.event is not None:
        events = list(current.get("events") or [])
        if any(e.get("id") == change.event.get("id") for e in events):
            return Applied(updates={}, record=current)
        updates["events"] = [*events, dict(change.event)]
        new_status = status_after(status, str(change.event["type"]))
        if change.outbox is not None:
            updates["outbox"] = [*(current.get("outbox") or []), dict(change.outbox)]
            updates["outbox_pending"] = True
    if status in TERMINAL:
        new_status = status
    elif change.error is not None:
        updates["error"] = dict(change.error)
    updates["status"] = new_status
    updates["updated_at"] = stamp
    record = merge(current, nested(updates))
    champion = None
    promotion = record.get("promotion") or {}
    if new_status == "succeeded" and status != "succeeded" and not promotion.get("superseded_by"):
        champion = {
            "run_id": record["run_id"],
            "metrics": (record.get("evaluation") or {}).get("metrics", {}),
            "model_artifact": record.get("model_artifact", {}),
            "since": stamp,
            "reference": promotion.get("reference", ""),
            "digest": promotion.get("digest", ""),
            "alias": promotion.get("alias", ""),
        }
    return Applied(updates=updates, record=record, champion=champion)


def nested(updates: Mapping[str, Any]) -> dict[str, Any]:
    """Turn Firestore dotted-path updates into a nested dict."""
    out: dict[str, Any] = {}
    for path, value in updates.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``changes`` into a copy of ``base`` (what Firestore does with dotted-path updates)."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
