"""The approval gate between evaluation and delivery: a recorded human decision where the deployed policy asks one.

evaluation.passed → clear_delivery → delivery.cleared (no approval required) | approval.requested (the run waits)
POST decision (`cd4ml approve|reject`, HTTP) → decide_approval → delivery.cleared | run.rejected | refusal recorded
watch.ticked → watch_approvals → run.rejected for requests that expired without a decision

Whether a model needs approval, who approves and how long a request stands is the deployed policy's
(``CD4ML_APPROVAL_POLICY``, set by the platform team), never the bucket's manifest a model team pushes. Who decided
is the verified ``email`` of the Google-signed ID token the request carries (``cd4ml.id_tokens``), never a field
the sender writes. Each decision is a pure function of typed values (``clearance``, ``decision``, ``expiry``)
applied inside the run's optimistic write (``Ledger.record``'s check): a run that ended or was decided meanwhile
takes no decision, and a decision for a run the ledger does not know is refused and kept nowhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cd4ml import events, runtime
from cd4ml.approval_policy import Policy
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now, parse_time, plain
from cd4ml.id_tokens import Unverified, bearer, verify
from cd4ml.manifest import Approval
from cd4ml.outcome import Outcome
from cd4ml.payloads import EvaluationPassed
from cd4ml.run import AWAITING_APPROVAL, Run, RunId, is_run_id
from cd4ml.runtime import Context, active_run

if TYPE_CHECKING:
    import flask

#: How many refused decisions a run record keeps.
KEEP_REFUSALS = 20
#: The longest reason a decision may give.
MAX_REASON = 1024
DECISIONS = ("approve", "reject")


@dataclass(frozen=True)
class Decided:
    """A person's decision as the endpoint received it: ``by`` is the verified principal, ``id`` the endpoint's own."""

    decision: str
    by: str
    reason: str
    id: str


def policy(ctx: Context) -> Policy:
    """The deployed approval policy (read on each use: the local stack rewrites its file when it deploys a model)."""
    return Policy.of(ctx.settings.approval_policy)


def clearance(passed: EvaluationPassed, gate: Mapping[str, Any], rule: Approval | None, at: datetime) -> Outcome:
    """delivery.cleared at once when no approval is required; else approval.requested with what approvers see."""
    gate = plain(gate)  # an event's data is frozen all the way down; Firestore takes plain dicts and lists only
    candidate = {"model": passed.model, "model_artifact": passed.model_artifact.to_dict(), "metrics": passed.metrics}
    if rule is None:
        return Outcome.event(events.DELIVERY_CLEARED, candidate)
    expires_at = format_time(at + rule.expires_after)
    return Outcome.event(
        events.APPROVAL_REQUESTED,
        {**candidate, "gate": gate, "approvers": list(rule.approvers), "expires_at": expires_at},
        {
            "approval": {
                "approvers": list(rule.approvers),
                "requested_at": format_time(at),
                "expires_at": expires_at,
                "metrics": dict(passed.metrics),
                "gate": gate,
            }
        },
    )


def _refused(run: Run, decided: Decided, at: datetime, why: str) -> Outcome:
    """The decision is not applied: the refusal is recorded on the run (once per decision), which keeps its status."""
    kept = list((run.approval.refused if run.approval else ()) or ())
    if any(r.get("id") == decided.id for r in kept):
        return Outcome.nothing(f"decision {decided.id} by {decided.by} was already refused: {why}")
    refusal = {
        "id": decided.id,
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


def approvers(run: Run, rule: Approval | None) -> tuple[str, ...]:
    """Who may decide the run: the deployed policy's approvers of its model, else those its request named."""
    if rule is not None:
        return rule.approvers
    return run.approval.approvers if run.approval else ()


def decision(run: Run, decided: Decided, rule: Approval | None, at: datetime) -> Outcome:
    """An approver's approve clears delivery and a reject ends the run rejected; anyone else, or a decision on a
    run that is not waiting (any more), is refused (recorded only while the run waits); a decision after the expiry
    ends the run rejected. ``rule`` is the deployed policy's rule of the run's model."""
    approval = run.approval
    if run.status != AWAITING_APPROVAL or approval is None:
        state = f"already decided ({approval.decision} by {approval.by})" if approval and approval.by else run.status
        return Outcome.nothing(
            f"refused the {decided.decision} by {decided.by}: run {run.run_id} is not awaiting approval: {state}"
        )
    allowed = approvers(run, rule)
    if decided.by not in allowed:
        return _refused(
            run, decided, at, f"{decided.by} is not an approver of model {run.model} (approvers: {', '.join(allowed)})"
        )
    if expires(run, rule) and at >= parse_time(expires(run, rule)):
        return expiry(run, at, rule)
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


def expires(run: Run, rule: Approval | None) -> str:
    """When the run's request expires: as recorded, or sooner if the deployed policy's expiry is now shorter."""
    approval = run.approval
    if approval is None or not approval.expires_at:
        return ""
    if rule is None or not approval.requested_at:
        return approval.expires_at
    return min(approval.expires_at, format_time(parse_time(approval.requested_at) + rule.expires_after))


def expiry(run: Run, at: datetime, rule: Approval | None = None) -> Outcome:
    """run.rejected once the request's expiry (``expires``) passed with no decision; nothing before."""
    until = expires(run, rule)
    if run.status != AWAITING_APPROVAL or not until or at < parse_time(until):
        return Outcome.nothing(f"approval of {run.run_id} open until {until or '?'}")
    reason = f"no approver decided before the request expired at {until}"
    return Outcome.event(
        events.RUN_REJECTED,
        {"model": run.model, "reason": reason, "by": "expiry", "expired": True},
        {"approval.decision": "expired", "approval.decided_at": format_time(at)},
        error=reason,
    )


class _Moved(Exception):
    """The run changed between the read a decision was made on and its write: decide again on the new record."""


def _apply(ctx: Context, run_id: str, decide: Callable[[Run], Outcome], attempts: int = 10) -> Outcome:
    """Decide on the run as read and record the outcome only if the record, as the optimistic write reads it, still
    yields the same outcome (``Ledger.record``'s check); otherwise decide again. Returns the outcome applied."""
    for _ in range(attempts):
        run = ctx.ledger.run(run_id)
        if run is None:
            raise LookupError(run_id)
        outcome = decide(run)
        if outcome.emit is None and not outcome.record:
            ctx.info(outcome.note, run_id)
            return outcome

        def same(doc: Mapping[str, Any], expected: Outcome = outcome) -> None:
            if decide(Run.from_document(dict(doc))) != expected:
                raise _Moved(run_id)

        try:
            ctx.conclude(run_id, outcome, check=same)
        except _Moved:
            continue
        return outcome
    raise RetryableError(f"run {run_id} kept changing under {attempts} attempts to apply a decision")


def clear_delivery(message: PubSubMessage, ctx: Context) -> None:
    """evaluation.passed → delivery.cleared | approval.requested (its expiry counted from the evaluation's time),
    as the deployed policy (not the bucket's manifest) says."""
    event = Event.from_message(message, [events.EVALUATION_PASSED])
    run = active_run(ctx, event)
    if run is None:
        return
    gate = dict(event.data.get("gate") or {})
    rule = policy(ctx).rule(run.model)
    ctx.conclude(run.run_id, clearance(EvaluationPassed.of(event), gate, rule, event.time))


@dataclass(frozen=True)
class Answer:
    """The endpoint's answer: an HTTP status and a JSON body (``outcome`` applied, or ``refused`` and why)."""

    status: int
    body: Mapping[str, Any]


def _refusal(status: int, why: str, **more: Any) -> Answer:
    return Answer(status, {"refused": why, **more})


def _request(body: Any) -> tuple[str, str, str, str | None] | str:
    """(run id, decision, reason, the ``by`` the sender claims) of a decision request's JSON, or what is wrong."""
    if not isinstance(body, dict):
        return 'the request body is not a JSON object {"run_id", "decision", "reason"}'
    problems = []
    run_id, decided, reason, by = body.get("run_id"), body.get("decision"), body.get("reason"), body.get("by")
    if not isinstance(run_id, str) or not is_run_id(run_id):
        problems.append(f"run_id {str(run_id)[:80]!r} is not a run id (MODEL-YYYYMMDDtHHMMSSz)")
    if decided not in DECISIONS:
        problems.append(f"decision {str(decided)[:20]!r} is not one of {', '.join(DECISIONS)}")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        problems.append(f"reason must be a non-empty text of at most {MAX_REASON} characters")
    if by is not None and not isinstance(by, str):
        problems.append("by, when given, must be a principal (user:EMAIL or serviceAccount:EMAIL)")
    if problems:
        return "; ".join(problems)
    return str(run_id), str(decided), str(reason), by


def decide(authorization: str | None, body: Any, ctx: Context, at: datetime | None = None) -> Answer:
    """A decision request → the decision applied (200) or refused: 401 no valid ID token, 400 a malformed request,
    404 no such run (kept nowhere: never applied later), 403 not an approver or a ``by`` that is not the token's
    (recorded on the waiting run), 409 the run is not awaiting approval (it ended or was decided)."""
    settings = ctx.settings
    try:
        principal = verify(
            bearer(authorization),
            [a for a in settings.decision_audiences.split(",") if a.strip()],
            settings.token_certs_url,
        )
    except Unverified as unverified:
        ctx.log.warning(f"decision refused: {unverified.reason}", extra={"stage": settings.stage})
        return _refusal(401, unverified.reason)
    parsed = _request(body)
    if isinstance(parsed, str):
        ctx.info(f"decision by {principal.member} refused: {parsed}")
        return _refusal(400, parsed)
    run_id, verdict, reason, claimed = parsed
    at = at or now()
    decided = Decided(decision=verdict, by=principal.member, reason=reason, id=str(uuid.uuid4()))
    rule = policy(ctx).rule(RunId.parse(run_id).model)

    def judge(run: Run) -> Outcome:
        if claimed is not None and claimed != principal.member:
            why = f"the decision names {claimed} but its ID token is {principal.member}'s"
            return _refused(run, decided, at, why) if run.status == AWAITING_APPROVAL else Outcome.nothing(why)
        return decision(run, decided, rule, at)

    try:
        outcome = _apply(ctx, run_id, judge)
    except LookupError:
        why = f"no run {run_id} in the ledger: a decision for a run that does not exist is refused, not kept"
        ctx.info(f"decision by {principal.member} refused: {why}")
        return _refusal(404, why)
    refusals = outcome.record.get("approval.refused") or ()
    if outcome.emit is not None:
        return Answer(200, {"run_id": run_id, "by": principal.member, "decision": verdict, "outcome": outcome.type})
    mine = [r for r in refusals if r.get("id") == decided.id]
    if mine:
        return _refusal(403, str(mine[0]["why"]), run_id=run_id, by=principal.member)
    return _refusal(409, outcome.note.partition(": ")[2] or outcome.note, run_id=run_id, by=principal.member)


def decide_http(request: flask.Request, ctx: Context) -> tuple[dict[str, Any], int]:
    """The HTTP edge of ``decide``: the Authorization header and JSON body in, a JSON answer out."""
    answer = decide(request.headers.get("Authorization"), request.get_json(silent=True), ctx)
    return dict(answer.body), answer.status


def watch_approvals(message: PubSubMessage, ctx: Context) -> None:
    """On a tick, end every expired approval request rejected; one run's trouble does not stop the others."""
    Event.from_message(message, [events.WATCH_TICKED])
    ctx.flush_outbox()  # events recorded by an instance that died before publishing them
    at = now()
    rules = policy(ctx)

    def expire_if_due(run: Run) -> None:
        rule = rules.rule(run.model)
        if expiry(run, at, rule).emit is not None:
            _apply(ctx, run.run_id, lambda r: expiry(r, at, rule))

    runtime.sweep(
        ctx,
        [("status", "==", AWAITING_APPROVAL)],
        expire_if_due,
        doing="end the expired approval",
        also=(LookupError,),
    )
