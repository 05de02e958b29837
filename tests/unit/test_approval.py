"""The approval gate's decisions, with real Event and Run values: clear, ask, apply, refuse, expire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cd4ml_models import folder as models

from cd4ml import events
from cd4ml.errors import InvalidManifest
from cd4ml.events import Event
from cd4ml.manifest import Approval, parse
from cd4ml.payloads import Artifact, EvaluationPassed
from cd4ml.run import AWAITING_APPROVAL, Run
from cd4ml.stages import approval
from cd4ml.transition import Change, apply, status_after

RUN = "digits-20300101t030000z"
MANIFEST = models.read(Path(__file__).resolve().parents[2] / "examples" / "digits")
MODEL = Artifact(uri=f"gs://a/runs/{RUN}/model/model.joblib", sha256="b" * 64)
STAMP = "2030-01-01T03:00:00.000Z"
AT = datetime(2030, 1, 1, 3, 0, tzinfo=UTC)
ALICE, BOB, MALLORY = "user:alice@example.com", "serviceAccount:bob@p.iam.gserviceaccount.com", "user:mallory@x.org"
RULE = Approval(approvers=(ALICE, BOB), expires_after=timedelta(hours=72))
GATE = {"metric": "accuracy", "value": 0.97, "threshold": 0.9, "champion_value": 0.96, "champion_run": "digits-x"}


def _passed() -> EvaluationPassed:
    event = Event.new(
        events.EVALUATION_PASSED,
        RUN,
        {"model": "digits", "model_artifact": MODEL.to_dict(), "metrics": {"accuracy": 0.97}, "gate": GATE},
        source="//evaluate",
    )
    return EvaluationPassed.of(event)


def _waiting(**approval_fields: Any) -> Run:
    """A run that asked for approval at AT (the document clear_delivery's outcome leaves)."""
    outcome = approval.clearance(_passed(), GATE, RULE, AT)
    return Run.from_document(
        {
            "run_id": RUN,
            "model": "digits",
            "status": AWAITING_APPROVAL,
            "created_at": STAMP,
            "updated_at": STAMP,
            "events": [],
            "manifest": MANIFEST.raw,
            "model_artifact": MODEL.to_dict(),
            "approval": {**outcome.record["approval"], **approval_fields},
        }
    )


def _decided(decision: str, by: str, reason: str = "looked at the metrics", id: str = "d1") -> approval.Decided:
    """A decision as the endpoint builds it: ``by`` is the ID token's verified principal."""
    return approval.Decided(decision=decision, by=by, reason=reason, id=id)


def test_without_approval_the_candidate_is_cleared_at_once_with_its_model() -> None:
    outcome = approval.clearance(_passed(), GATE, None, AT)
    assert outcome.type == events.DELIVERY_CLEARED
    assert outcome.data["model_artifact"] == MODEL.to_dict() and outcome.record == {}
    Event.new(events.DELIVERY_CLEARED, RUN, outcome.data, source="//t")  # valid per its schema


def test_with_approval_the_run_waits_showing_metrics_champion_and_expiry() -> None:
    outcome = approval.clearance(_passed(), GATE, RULE, AT)
    assert outcome.type == events.APPROVAL_REQUESTED
    assert outcome.data["approvers"] == [ALICE, BOB] and outcome.data["gate"]["champion_value"] == 0.96
    assert outcome.data["expires_at"] == "2030-01-04T03:00:00.000Z"
    assert outcome.record["approval"]["metrics"] == {"accuracy": 0.97}
    Event.new(events.APPROVAL_REQUESTED, RUN, outcome.data, source="//t")
    assert status_after("running", events.APPROVAL_REQUESTED) == AWAITING_APPROVAL


def test_an_approvers_approve_clears_delivery_and_records_who_why_when() -> None:
    outcome = approval.decision(_waiting(), _decided("approve", BOB), RULE, AT + timedelta(hours=1))
    assert outcome.type == events.DELIVERY_CLEARED and outcome.error is None
    assert outcome.data["approval"] == {"by": BOB, "reason": "looked at the metrics", "at": "2030-01-01T04:00:00.000Z"}
    assert outcome.record["approval.decision"] == "approve" and outcome.record["approval.by"] == BOB
    Event.new(events.DELIVERY_CLEARED, RUN, outcome.data, source="//t")
    assert status_after(AWAITING_APPROVAL, events.DELIVERY_CLEARED) == "running"


def test_an_approvers_reject_ends_the_run_rejected_with_the_reason() -> None:
    outcome = approval.decision(_waiting(), _decided("reject", ALICE, "bias on group B"), RULE, AT)
    assert outcome.type == events.RUN_REJECTED and outcome.data["expired"] is False
    assert outcome.error == f"rejected by {ALICE}: bias on group B"
    assert status_after(AWAITING_APPROVAL, events.RUN_REJECTED) == "rejected"


def test_a_non_approver_is_refused_and_recorded_and_the_run_keeps_waiting() -> None:
    outcome = approval.decision(_waiting(), _decided("approve", MALLORY), RULE, AT)
    assert outcome.emit is None
    (refusal,) = outcome.record["approval.refused"]
    assert refusal["by"] == MALLORY and refusal["id"] == "d1" and "not an approver of model digits" in refusal["why"]
    doc = _waiting().to_document()
    applied = apply(doc, Change(fields=outcome.record), STAMP)
    assert applied.record["status"] == AWAITING_APPROVAL


def test_the_same_refused_decision_delivered_twice_is_recorded_once() -> None:
    refused = [{"id": "d1", "by": MALLORY, "why": "not an approver"}]
    outcome = approval.decision(_waiting(refused=refused), _decided("approve", MALLORY), RULE, AT)
    assert outcome.emit is None and outcome.record == {}


def test_a_decision_on_a_run_not_waiting_is_refused_naming_the_earlier_decision() -> None:
    decided = _waiting(decision="approve", by=ALICE)
    run = Run.from_document({**decided.to_document(), "status": "running"})
    outcome = approval.decision(run, _decided("reject", BOB, id="d2"), RULE, AT)
    assert outcome.emit is None and outcome.record == {}, "a run no longer waiting takes no decision, records nothing"
    assert f"already decided (approve by {ALICE})" in outcome.note


def test_a_request_expires_into_rejected_and_not_a_moment_before() -> None:
    run = _waiting()
    assert approval.expiry(run, AT + timedelta(hours=71, minutes=59)).emit is None
    outcome = approval.expiry(run, AT + timedelta(hours=72))
    assert outcome.type == events.RUN_REJECTED and outcome.data == {
        "model": "digits",
        "reason": "no approver decided before the request expired at 2030-01-04T03:00:00.000Z",
        "by": "expiry",
        "expired": True,
    }
    assert outcome.record["approval.decision"] == "expired"


def test_a_decision_arriving_after_the_expiry_rejects_instead_of_approving() -> None:
    outcome = approval.decision(_waiting(), _decided("approve", ALICE), RULE, AT + timedelta(days=4))
    assert outcome.type == events.RUN_REJECTED and outcome.data["expired"] is True


def test_the_manifest_approval_section_is_validated_and_typed() -> None:
    raw = {**MANIFEST.raw, "approval": {"required": True, "approvers": [ALICE], "expires_after": "90m"}}
    assert parse(raw).approval == Approval(approvers=(ALICE,), expires_after=timedelta(minutes=90))
    assert parse({**MANIFEST.raw, "approval": {"required": False, "approvers": [ALICE]}}).approval is None
    with pytest.raises(InvalidManifest) as bad:
        parse({**MANIFEST.raw, "approval": {"required": True, "approvers": ["alice"], "expires_after": "3 days"}})
    assert len(bad.value.problems) == 2


def test_the_deployed_policy_names_the_approvers_not_the_request() -> None:
    """An approver the policy no longer names is refused; one it names now decides (the record only shows who was asked)."""
    now_rule = Approval(approvers=(MALLORY,), expires_after=timedelta(hours=72))
    assert approval.decision(_waiting(), _decided("approve", ALICE), now_rule, AT).emit is None
    assert approval.decision(_waiting(), _decided("approve", MALLORY), now_rule, AT).type == events.DELIVERY_CLEARED


def test_a_shorter_deployed_expiry_ends_a_request_sooner() -> None:
    shorter = Approval(approvers=(ALICE,), expires_after=timedelta(hours=1))
    assert approval.expiry(_waiting(), AT + timedelta(hours=2)).emit is None
    assert approval.expiry(_waiting(), AT + timedelta(hours=2), shorter).type == events.RUN_REJECTED


def test_a_run_that_ended_does_not_expire_again() -> None:
    ended = Run.from_document({**_waiting().to_document(), "status": "rejected"})
    assert approval.expiry(ended, AT + timedelta(days=9)).emit is None
