"""Pure rules of the run ledger: run ids and status transitions."""

from __future__ import annotations

from datetime import UTC, datetime

from cd4ml import events
from cd4ml.ledger import _merge, is_run_id, run_id, status_after


def test_run_id_derives_from_model_and_scheduled_time() -> None:
    rid = run_id("digits", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert rid == "digits-20260102t030405z"
    assert is_run_id(rid) and not is_run_id("digits") and not is_run_id("../etc")


def test_status_follows_the_catalog_and_a_finished_run_stays_finished() -> None:
    assert status_after("running", events.DATA_FETCHED) == "running"
    assert status_after("running", events.TRAINING_FAILED) == "failed"
    assert status_after("running", events.EVALUATION_FAILED) == "failed"
    assert status_after("failed", events.CANARY_TRIGGERED) == "failed"
    assert status_after("rejected", events.DATA_FETCHED) == "rejected"


def test_merge_is_deep_like_firestore_dotted_updates() -> None:
    assert _merge({"training": {"job": "j", "state": "A"}}, {"training": {"state": "B"}}) == {
        "training": {"job": "j", "state": "B"}}
