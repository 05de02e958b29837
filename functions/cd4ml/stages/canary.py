"""watch_canary and promote: a run ends only when production has proven its model.

watch_canary: on each tick, per run whose canary is active, read the Spinnaker execution (Gate
``GET /pipelines/{id}``) → decide (``verdict``: succeeded, failed naming the stage, or past the deadline) →
conclude. promote: canary.succeeded → act once (move the registry alias to the image digest) → decide
(``promotion``) → conclude: the run succeeds and its model becomes the champion in the same atomic write.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cd4ml import evaluation_gate, events, runtime
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now, parse_time
from cd4ml.manifest import parse
from cd4ml.outcome import Outcome
from cd4ml.run import Canary, Run
from cd4ml.runtime import Context, checked_run

#: Orca's ExecutionStatus values that end an execution without success (a pipeline never ends FAILED_CONTINUE).
FAILED = ("TERMINAL", "CANCELED", "STOPPED")
SUCCEEDED = "SUCCEEDED"


def failing_stage(execution: Mapping[str, Any]) -> str:
    """The name of the first stage that ended the execution (TERMINAL, CANCELED, STOPPED), or ``""``."""
    for stage in execution.get("stages") or []:
        if isinstance(stage, Mapping) and stage.get("status") in FAILED:
            return str(stage.get("name") or stage.get("type") or "")
    return ""


def verdict(run: Run, execution: Mapping[str, Any] | None, at: datetime, champion: Mapping[str, Any] | None) -> Outcome:
    """canary.succeeded, canary.failed (the stage that failed or was canceled, or the deadline), or nothing yet."""
    canary = run.canary or Canary()
    status = str((execution or {}).get("status") or "")
    previous = {
        "previous_run_id": str((champion or {}).get("run_id") or ""),
        "previous_digest": str((champion or {}).get("digest") or ""),
    }
    ended = {"canary.active": False, "canary.status": status, "canary.ended_at": format_time(at)}
    if status == SUCCEEDED:
        return Outcome.event(
            events.CANARY_SUCCEEDED,
            {
                "model": run.model,
                "execution_id": canary.execution_id,
                "application": canary.application,
                "pipeline": canary.pipeline,
            },
            {**ended, "canary.verdict": "succeeded"},
        )
    if status in FAILED:
        stage = failing_stage(execution or {})
        reason = (
            f"Spinnaker execution {canary.execution_id} of {canary.pipeline or 'the canary pipeline'} ended "
            f"{status}" + (f" at stage {stage!r}" if stage else "")
        )
        return _failed(run.model, canary, status, stage, reason, previous, ended)
    if canary.deadline and at >= parse_time(canary.deadline):
        reason = (
            f"Spinnaker execution {canary.execution_id} had not ended by its deadline {canary.deadline} "
            f"(still {status or 'unknown'}); champion and alias unchanged"
        )
        return _failed(run.model, canary, "DEADLINE", "", reason, previous, ended)
    return Outcome.nothing(
        f"canary execution {canary.execution_id} {status or 'not readable yet'}",
        {"canary.status": status} if status and status != canary.status else None,
    )


def _failed(
    model: str,
    canary: Canary,
    status: str,
    stage: str,
    reason: str,
    previous: Mapping[str, str],
    ended: Mapping[str, Any],
) -> Outcome:
    """canary.failed with what a rollback needs (the previous champion); the run ends failed with ``reason``."""
    data = {
        "model": model,
        "reason": reason,
        "event_id": canary.event_id,
        "execution_id": canary.execution_id,
        "status": status,
        **previous,
    }
    if stage:
        data["stage"] = stage
    record = {
        **ended,
        "canary.status": status,
        "canary.verdict": "failed",
        "canary.stage": stage,
        "canary.reason": reason,
    }
    return Outcome.event(events.CANARY_FAILED, data, record, error=reason)


def watch_canary(message: PubSubMessage, ctx: Context) -> None:
    """On a tick, follow every active canary; one execution's trouble does not stop the others."""
    from cd4ml import catalog, gate_credentials, spinnaker

    Event.from_message(message, [events.WATCH_TICKED])
    ctx.flush_outbox()  # events recorded by an instance that died before publishing them
    gate = spinnaker.GateClient(  # one budget for the tick: a slow Gate leaves the rest to the next tick
        ctx.settings.gate_url,
        credentials=gate_credentials.load(ctx.settings.gate_auth),
        budget_seconds=spinnaker.budget(catalog.load().stage("watch_canary").timeout_seconds),
    )

    def follow(run: Run) -> None:
        try:
            execution: Mapping[str, Any] | None = gate.execution((run.canary or Canary()).execution_id)
        except RetryableError as trouble:
            ctx.log.warning(str(trouble), extra={"stage": ctx.settings.stage, "run_id": run.run_id})
            execution = None  # the deadline still applies while Gate cannot be read
        outcome = verdict(run, execution, now(), ctx.ledger.champion(run.model))
        if outcome.emit is None:
            if outcome.record:
                ctx.ledger.record(run.run_id, fields=outcome.record)
            return
        ctx.conclude(run.run_id, outcome)

    runtime.sweep(ctx, [("canary.active", "==", True)], follow, doing="record the canary")


def promotion(
    run: Run, alias: str, champion: Mapping[str, Any] | None, moved_at: str, superseded_by: str = ""
) -> Outcome:
    """model.promoted: the alias points at the run's image; the record keeps the champion it replaced.

    ``superseded_by``: the run's promotion was interrupted and a newer run was promoted meanwhile; the alias stays
    at that run's image (moving it back would regress the model) and the champion stays that run.
    """
    reference, digest = run.image.reference, run.image.digest
    previous = {
        "previous_run_id": str((champion or {}).get("run_id") or ""),
        "previous_digest": str((champion or {}).get("digest") or ""),
    }
    later = {"superseded_by": superseded_by} if superseded_by else {}
    record = {"alias": alias, "reference": reference, "digest": digest, **previous, **later, "at": moved_at}
    return Outcome.event(
        events.MODEL_PROMOTED,
        {"model": run.model, "alias": alias, "reference": reference, "digest": digest, **previous, **later},
        {"promotion": record},
    )


def promote(message: PubSubMessage, ctx: Context) -> None:
    """canary.succeeded → the alias moves to the image digest (once), then model.promoted: the run succeeds."""
    from cd4ml import catalog, registry

    event = Event.from_message(message, [events.CANARY_SUCCEEDED])
    run = checked_run(ctx, event)  # its own canary's verdict succeeded, on the image its build reported
    if run is None:
        return
    alias = parse(run.manifest).alias
    repo = registry.Repository.of(run.image.reference, ctx.settings.registry_api)
    client = registry.RegistryClient(  # the token is asked only when the registry challenges
        token=registry.adc_token, budget_seconds=registry.budget(catalog.load().stage("promote").timeout_seconds)
    )
    # One promotion of a model at a time, from the champion's read to its record (Ledger.model_lock).
    with ctx.ledger.model_lock(run.model, "promotion"):
        _promote(ctx, run, alias, repo, client)


def outdone(run: Run, champion: Mapping[str, Any] | None) -> Outcome | None:
    """run.failed when a champion promoted since the run's evaluation is one the run does not pass the gate
    against (a slower, worse run must not replace a better champion); None when the run may replace it."""
    evaluation = run.evaluation
    if champion is None or evaluation is None or champion.get("run_id") in (None, run.run_id):
        return None
    if champion.get("run_id") == evaluation.gate.get("champion_run"):
        return None  # the champion the evaluation already compared against
    decision = evaluation_gate.decide(evaluation.metrics, parse(run.manifest).evaluation, champion)
    if decision.passed:
        return None
    reason = (
        f"not promoted: run {champion.get('run_id')} became champion after this run's evaluation, and against it "
        f"the gate fails: {'; '.join(decision.reasons)}"
    )
    return Outcome.run_failed(run.model, "promote", "champion_changed", reason)


def _promote(ctx: Context, run: Run, alias: str, repo: Any, client: Any) -> None:
    champion = ctx.ledger.champion(run.model)  # read before this run replaces it, under the model's lock
    beaten = outdone(run, champion) if ctx.ledger.claim(run.run_id, "promotion") is None else None
    if beaten is not None:
        ctx.conclude(run.run_id, beaten)
        return

    def move_result() -> dict[str, Any]:
        return {
            "at": format_time(now()),
            "previous_run_id": str((champion or {}).get("run_id") or ""),
            "previous_digest": str((champion or {}).get("digest") or ""),
        }

    def move() -> dict[str, Any]:
        client.tag(repo, run.image.digest, alias)
        return move_result()

    def moved() -> dict[str, Any] | None:
        # A crash after the move, before its record: ask the registry first, as jobs and builds are asked, so the
        # alias is moved once (the chaos session found a second move per such crash).
        if client.digest(repo, alias) == run.image.digest:
            return move_result()
        # The alias is elsewhere: this run's move never happened, or another run's promotion came after it. A
        # champion recorded after this run's claim began is newer than any move this run made: moving the alias
        # now would move it twice and back to an older model (the chaos storm: 51 runs of one model).
        began = str((ctx.ledger.claim(run.run_id, "promotion") or {}).get("claimed_at") or "")
        latest = ctx.ledger.champion(run.model) or {}
        if began and latest.get("run_id") not in (None, run.run_id) and str(latest.get("since") or "") > began:
            return {**move_result(), "at": began, "superseded_by": str(latest["run_id"])}
        return None

    result, _ = ctx.once(run.run_id, move, recover=moved)
    before = (
        {"run_id": result["previous_run_id"], "digest": result["previous_digest"]}
        if result["previous_run_id"]
        else None
    )
    superseded_by = str(result.get("superseded_by") or "")
    if superseded_by:
        ctx.info(
            f"promotion interrupted, and run {superseded_by} was promoted since: {alias} stays at its image", run.run_id
        )
    ctx.conclude(run.run_id, promotion(run, alias, before, result["at"], superseded_by))
