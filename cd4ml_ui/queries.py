"""What the web view reads from the run ledger: pages of runs, one run, a model's runs and champions; read-only.

Two readers with one shape: ``FirestoreLedger`` (the deployment's Firestore, or the emulator) and ``MemoryLedger``
(a list of run records, for tests). The Firestore queries are the ones terraform/firestore.tf indexes:
``runs`` ordered by ``created_at`` descending, filtered by ``model``, ``status`` or both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

RUNS = "runs"
MODELS = "models"
AWAITING_APPROVAL = "awaiting_approval"
SUCCEEDED = "succeeded"
#: The fields the runs table shows: a projection, so a page of 50 large records stays small on the wire.
TABLE_FIELDS = ("run_id", "model", "trigger", "status", "created_at", "updated_at", "events", "error")
#: The fields a model's history needs (its plot and its champions).
HISTORY_FIELDS = ("run_id", "model", "status", "created_at", "evaluation", "promotion", "image")


@dataclass(frozen=True)
class Page:
    """One page of runs, newest first, and the cursor of the next page (None on the last one)."""

    runs: tuple[Mapping[str, Any], ...]
    next_after: str | None


class Ledger(Protocol):
    """The reads the web view makes; nothing here writes."""

    def page(self, *, model: str | None, status: str | None, limit: int, after: str | None) -> Page: ...

    def run(self, run_id: str) -> Mapping[str, Any] | None: ...

    def model_runs(self, model: str, limit: int) -> list[Mapping[str, Any]]: ...

    def promotions(self, model: str, limit: int) -> list[Mapping[str, Any]]: ...

    def champions(self) -> dict[str, Mapping[str, Any]]: ...

    def awaiting(self, limit: int) -> list[Mapping[str, Any]]: ...


def _newest_first(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(runs, key=lambda r: (str(r.get("created_at", "")), str(r.get("run_id", ""))), reverse=True)


def champion_history(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs that became champion (promoted, not superseded), most recent promotion first."""
    promoted = [
        r
        for r in runs
        if r.get("status") == SUCCEEDED
        and (r.get("promotion") or {}).get("digest")
        and not (r.get("promotion") or {}).get("superseded_by")
    ]
    return sorted(
        promoted, key=lambda r: str((r.get("promotion") or {}).get("at") or r.get("created_at")), reverse=True
    )


class MemoryLedger:
    """The ledger as a list of run records (and champions by model): what the unit tests read."""

    def __init__(self, runs: Sequence[Mapping[str, Any]], champions: Mapping[str, Mapping[str, Any]] | None = None):
        self._runs = _newest_first(runs)
        self._champions = dict(champions or {})

    def page(self, *, model: str | None, status: str | None, limit: int, after: str | None) -> Page:
        rows = [
            r for r in self._runs if (not model or r.get("model") == model) and (not status or r["status"] == status)
        ]
        if after:
            ids = [r.get("run_id") for r in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        shown = rows[:limit]
        return Page(tuple(shown), str(shown[-1]["run_id"]) if len(rows) > limit else None)

    def run(self, run_id: str) -> Mapping[str, Any] | None:
        return next((r for r in self._runs if r.get("run_id") == run_id), None)

    def model_runs(self, model: str, limit: int) -> list[Mapping[str, Any]]:
        return [r for r in self._runs if r.get("model") == model][:limit]

    def promotions(self, model: str, limit: int) -> list[Mapping[str, Any]]:
        return champion_history(r for r in self._runs if r.get("model") == model)[:limit]

    def champions(self) -> dict[str, Mapping[str, Any]]:
        return dict(self._champions)

    def awaiting(self, limit: int) -> list[Mapping[str, Any]]:
        return [r for r in self._runs if r.get("status") == AWAITING_APPROVAL][:limit]


class FirestoreLedger:
    """The run ledger in Firestore (``runs/{run_id}``, ``models/{model}``), read with the client directly."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def _ordered(self, query: Any) -> Any:
        from google.cloud import firestore

        return query.order_by("created_at", direction=firestore.Query.DESCENDING).order_by(
            "__name__", direction=firestore.Query.DESCENDING
        )

    def _where(self, query: Any, field: str, value: str) -> Any:
        from google.cloud import firestore

        return query.where(filter=firestore.FieldFilter(field, "==", value))

    def page(self, *, model: str | None, status: str | None, limit: int, after: str | None) -> Page:
        query: Any = self._db.collection(RUNS)
        if model:
            query = self._where(query, "model", model)
        if status:
            query = self._where(query, "status", status)
        query = self._ordered(query).select(list(TABLE_FIELDS))
        if after:
            cursor = self._db.collection(RUNS).document(after).get()
            if not cursor.exists:
                return Page((), None)
            query = query.start_after(cursor)
        docs = list(query.limit(limit + 1).stream())
        shown = [d.to_dict() or {} for d in docs[:limit]]
        return Page(tuple(shown), docs[limit - 1].id if len(docs) > limit else None)

    def run(self, run_id: str) -> Mapping[str, Any] | None:
        snap = self._db.collection(RUNS).document(run_id).get()
        return (snap.to_dict() or {}) if snap.exists else None

    def model_runs(self, model: str, limit: int) -> list[Mapping[str, Any]]:
        query = self._ordered(self._where(self._db.collection(RUNS), "model", model)).select(list(HISTORY_FIELDS))
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def promotions(self, model: str, limit: int) -> list[Mapping[str, Any]]:
        query = self._where(self._where(self._db.collection(RUNS), "model", model), "status", SUCCEEDED)
        docs = self._ordered(query).select(list(HISTORY_FIELDS)).limit(limit).stream()
        return champion_history(d.to_dict() or {} for d in docs)

    def champions(self) -> dict[str, Mapping[str, Any]]:
        found: dict[str, Mapping[str, Any]] = {}
        for doc in self._db.collection(MODELS).stream():
            champion = (doc.to_dict() or {}).get("champion")
            if champion:
                found[doc.id] = champion
        return found

    def awaiting(self, limit: int) -> list[Mapping[str, Any]]:
        query = self._where(self._db.collection(RUNS), "status", AWAITING_APPROVAL)
        return _newest_first(d.to_dict() or {} for d in query.limit(limit).stream())
