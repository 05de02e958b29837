"""The web view's queries (cd4ml_ui.queries.FirestoreLedger) against the Firestore emulator: order, filters, cursor."""

from __future__ import annotations

from typing import Any

import pytest
from cd4ml_ui.queries import FirestoreLedger

MODEL = "uiq"


def _run(n: int, status: str, model: str = MODEL, promoted: bool = False) -> dict[str, Any]:
    created = f"2030-01-01T00:{n:02d}:00.000Z"
    record: dict[str, Any] = {
        "run_id": f"{model}-20300101t00{n:02d}00z",
        "model": model,
        "status": status,
        "created_at": created,
        "updated_at": created,
        "events": [{"type": "cd4ml.run.requested.v1", "id": f"e{n}", "time": created}],
        "manifest": {"name": model},
    }
    if promoted:
        record["promotion"] = {"digest": f"sha256:{n:064d}", "at": created, "alias": f"{model}:champion"}
    return record


@pytest.fixture(scope="module")
def book(services: Any) -> FirestoreLedger:
    from google.cloud import firestore
    from local_emulator import stack as local

    env = local.client_env(services)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", env["FIRESTORE_EMULATOR_HOST"])
        db = firestore.Client(project=env["CD4ML_PROJECT"])
    runs = [
        _run(1, "succeeded", promoted=True),
        _run(2, "failed"),
        _run(3, "succeeded", promoted=True),
        _run(4, "awaiting_approval"),
        _run(5, "failed"),
        _run(6, "succeeded", model="uiq-other"),
    ]
    batch = db.batch()
    for run in runs:
        batch.set(db.collection("runs").document(run["run_id"]), run)
    batch.commit()
    return FirestoreLedger(db)


def test_pages_are_newest_first_and_the_cursor_continues_where_the_page_ended(book: FirestoreLedger) -> None:
    first = book.page(model=MODEL, status=None, limit=2, after=None)
    assert [r["run_id"] for r in first.runs] == ["uiq-20300101t000500z", "uiq-20300101t000400z"]
    assert set(first.runs[0]) <= {"run_id", "model", "trigger", "status", "created_at", "updated_at", "events", "error"}
    second = book.page(model=MODEL, status=None, limit=2, after=first.next_after)
    assert [r["run_id"] for r in second.runs] == ["uiq-20300101t000300z", "uiq-20300101t000200z"]
    last = book.page(model=MODEL, status=None, limit=2, after=second.next_after)
    assert [r["run_id"] for r in last.runs] == ["uiq-20300101t000100z"] and last.next_after is None


def test_filters_by_status_and_by_model_and_status(book: FirestoreLedger) -> None:
    failed = book.page(model=MODEL, status="failed", limit=10, after=None)
    assert [r["run_id"] for r in failed.runs] == ["uiq-20300101t000500z", "uiq-20300101t000200z"]
    other = book.page(model="uiq-other", status=None, limit=10, after=None)
    assert [r["run_id"] for r in other.runs] == ["uiq-other-20300101t000600z"]


def test_champion_history_and_awaiting(book: FirestoreLedger) -> None:
    assert [r["run_id"] for r in book.promotions(MODEL, 10)] == ["uiq-20300101t000300z", "uiq-20300101t000100z"]
    assert "uiq-20300101t000400z" in [r["run_id"] for r in book.awaiting(200)]
    assert book.run("uiq-20300101t000100z") == _run(1, "succeeded", promoted=True)
    assert book.run("uiq-20300101t009900z") is None
