"""The approval gate between evaluation and delivery: a recorded human decision where the manifest asks for one.

evaluation.passed → clear_delivery → delivery.cleared (no approval required) | approval.requested (the run waits)
approval.decided (`cd4ml approve|reject`) → decide_approval → delivery.cleared | run.rejected | refusal recorded
watch.ticked → watch_approvals → run.rejected for requests that expired without a decision

Each decision is a pure function of typed values (``clearance``, ``decision``, ``expiry``); the handlers parse,
read the run, decide and conclude. Who may publish a decision at all is IAM's (terraform/iam_bindings.yaml,
``publish_approval_decisions``); which approver may decide which model's run is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cd4ml import events
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now, parse_time
from cd4ml.manifest import Approval, parse
from cd4ml.outcome import Outcome
from cd4ml.payloads import ApprovalDecided, EvaluationPassed
from cd4ml.run import AWAITING_APPROVAL, Run
from cd4ml.runtime import Context, active_run, require_run

#: How many refused decisions a run record keeps.
KEEP_REFUSALS = 20


def clearance(passed: EvaluationPassed, gate: Mapping[str, Any], rule: Approval | None, at: datetime) -> Outcome:
    """delivery.cleared at once when no approval is required; else approval.requested with what approvers see."""
    candidate = {"model": passed.model, "model_artifact": passed.model_artifact.to_dict(), "metrics": passed.metrics}
    if rule is None:
        return Outcome.event(events.DELIVERY_CLEARED, candidate)
    expires_at = format_time(at + rule.expires_after)
    return Outcome.event(
        events.APPROVAL_REQUESTED,
        {**candidate, "gate": dict(gate), "approvers": list(rule.approvers), "expires_at": expires_at},
        {
            "approval": {
                "approvers": list(rule.approvers),
                "requested_at": format_time(at),
                "expires_at": expires_at,
                "metrics": dict(passed.metrics),
                "gate": dict(gate),
            }
        },
    )


def _refused(run: Run, decided: ApprovalDecided, decision_id: str, at: datetime, why: str) -> Outcome:
    """The decision is not applied: the refusal is recorded on the run (once per decision), which keeps its status."""
    kept = list((run.approval.refused if run.approval else ()) or ())
    if any(r.get("id") == decision_id for r in kept):
        return Outcome.nothing(f"decision {decision_id} by {decided.by} was already refused: {why}")
    refusal = {
        "id": decision_id,
        "by": decided.by,
        "decision": decided.decision,
        "reason": decided.reason,
        "at": format_time(at),
        "why": why,
    }
    return Outcome.nothing(
        f"refused the {decided.decision} by {decided.by}: {why}",
        {"approval.refused": [*kept[-(KEEP_REFUSALS - 1) :], refusal]},
    )


def decision(run: Run, decided: ApprovalDecided, decision_id: str, at: datetime) -> Outcome:
    """An approver's approve clears delivery and a reject ends the run rejected; anyone else, or a decision on a
    run that is not waiting (any more), is refused and recorded; a decision after the expiry ends the run rejected."""
    approval = run.approval
    if run.status != AWAITING_APPROVAL or approval is None:
        state = f"already decided ({approval.decision} by {approval.by})" if approval and approval.by else run.status
        return _refused(run, decided, decision_id, at, f"run {run.run_id} is not awaiting approval: {state}")
    if decided.by not in approval.approvers:
        return _refused(
            run,
            decided,
            decision_id,
            at,
            f"{decided.by} is not an approver of model {run.model} (approvers: {', '.join(approval.approvers)})",
        )
    if approval.expires_at and at >= parse_time(approval.expires_at):
        return expiry(run, at)
    stamp = format_time(at)
    record = {
        "approval.decision": decided.decision,
        "approval.by": decided.by,
        "approval.reason": decided.reason,
        "approval.decided_at": stamp,
    }
    if decided.decision == "reject":
        reason = f"rejected by {decided.by}: {decided.reason}"
        return Outcome.event(
            events.RUN_REJECTED,
            {"model": run.model, "reason": reason, "by": decided.by, "expired": False},
            record,
            error=reason,
        )
    artifact = run.model_artifact
    return Outcome.event(
        events.DELIVERY_CLEARED,
        {
            "model": run.model,
            "model_artifact": artifact.to_dict() if artifact else {},
            "metrics": dict(approval.metrics),
            "approval": {"by": decided.by, "reason": decided.reason, "at": stamp},
        },
        record,
    )


def expiry(run: Run, at: datetime) -> Outcome:
    """run.rejected once the request's ``expires_at`` passed with no decision; nothing before."""
    approval = run.approval
    if approval is None or not approval.expires_at or at < parse_time(approval.expires_at):
        return Outcome.nothing(f"approval of {run.run_id} open until {approval.expires_at if approval else '?'}")
    reason = f"no approver decided before the request expired at {approval.expires_at}"
    return Outcome.event(
        events.RUN_REJECTED,
        {"model": run.model, "reason": reason, "by": "expiry", "expired": True},
        {"approval.decision": "expired", "approval.decided_at": format_time(at)},
        error=reason,
    )


def clear_delivery(message: PubSubMessage, ctx: Context) -> None:
    """evaluation.passed → delivery.cleared | approval.requested (its expiry counted from the evaluation's time)."""
    event = Event.from_message(message, [events.EVALUATION_PASSED])
    run = active_run(ctx, event)
    if run is None:
        return
    gate = dict(event.data.get("gate") or {})
    ctx.conclude(run.run_id, clearance(EvaluationPassed.of(event), gate, parse(run.manifest).approval, event.time))


def decide_approval(message: PubSubMessage, ctx: Context) -> None:
    """approval.decided → delivery.cleared | run.rejected, or the refusal recorded (the run keeps waiting).

    The decision's time is Pub/Sub's publish time, which the publisher cannot set.
    """
    event = Event.from_message(message, [events.APPROVAL_DECIDED])
    run = require_run(ctx, event)
    if run.ended:
        ctx.info(f"run already ended {run.status}; decision {event.id} ignored", run.run_id)
        return
    ctx.conclude(run.run_id, decision(run, ApprovalDecided.of(event), event.id, message.publish_time))


def watch_approvals(message: PubSubMessage, ctx: Context) -> None:
    """On a tick, end every expired approval request rejected; one run's trouble does not stop the others."""
    from google.api_core.exceptions import GoogleAPICallError

    Event.from_message(message, [events.WATCH_TICKED])
    ctx.flush_outbox()  # events recorded by an instance that died before publishing them
    at = now()
    for doc in ctx.ledger.where(("status", "==", AWAITING_APPROVAL)):
        run = Run.from_document(doc)
        outcome = expiry(run, at)
        if outcome.emit is None:
            continue
        try:
            ctx.conclude(run.run_id, outcome)
        except (RetryableError, GoogleAPICallError) as trouble:
            ctx.log.warning(
                f"could not end the expired approval; next tick retries: {trouble}",
                extra={"stage": ctx.settings.stage, "run_id": run.run_id},
            )
