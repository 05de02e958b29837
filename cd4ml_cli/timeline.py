"""A run record as a readable timeline, one line per milestone with its time and what it found."""

from __future__ import annotations

from typing import Any

from cd4ml.events import parse_time

_SHORT = "cd4ml."


def _detail(type_: str, run: dict[str, Any]) -> str:
    ds, tr, art, ev = (run.get(k) or {} for k in ("dataset", "training", "model_artifact", "evaluation"))
    image, canary, promotion = run.get("image") or {}, run.get("canary") or {}, run.get("promotion") or {}
    match type_.removeprefix(_SHORT).removesuffix(".v1"):
        case "run.requested":
            return f"model {run.get('model')} ({run.get('trigger', '?')}, scheduled {run.get('scheduled_time', '?')})"
        case "data.fetched":
            return f"{ds.get('rows', '?')} rows, {ds.get('bytes', '?')} bytes, sha256 {str(ds.get('sha256', ''))[:12]}…"
        case "training.submitted":
            return f"job {tr.get('job', '?')}"
        case "training.completed":
            reused = ((run.get("cache") or {}).get("training") or {}).get("reused_from")
            how = f" (reused from run {reused}, no Vertex job)" if reused else ""
            return f"model sha256 {str(art.get('sha256', ''))[:12]}… at {art.get('uri', '?')}{how}"
        case "training.failed":
            return f"{tr.get('state', '?')}: {tr.get('error', '?')}"
        case "evaluation.passed" | "evaluation.failed":
            gate = ev.get("gate") or {}
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in (ev.get("metrics") or {}).items())
            verdict = gate_rules(gate)
            reasons = "; ".join(ev.get("reasons") or [])
            return f"{metrics or 'no metrics'} ({verdict})" + (f": {reasons}" if reasons else "")
        case "image.built":
            smoke = run.get("smoke") or {}
            tested = (
                f"; smoke passed: {smoke.get('agreed', '?')}/{smoke.get('requests', '?')} golden requests agreed"
                if smoke.get("passed")
                else ""
            )
            return f"build {image.get('build_id', '?')}, {image.get('digest', '?')}{tested}"
        case "image.pushed":
            reused = ((run.get("cache") or {}).get("image") or {}).get("reused_from")
            return f"{image.get('reference', '?')}" + (f" (reused from run {reused}, no build)" if reused else "")
        case "run.skipped":
            return str(((run.get("cache") or {}).get("skipped") or {}).get("reason", ""))
        case "image.failed":
            return f"{image.get('status', '?')}: {image.get('error', '?')}"
        case "canary.triggered":
            return f"Spinnaker event {canary.get('event_id', '?')}, execution {canary.get('execution_id', '?')}"
        case "canary.succeeded":
            if canary.get("without_canary"):
                return str(canary["without_canary"])
            return f"execution {canary.get('execution_id', '?')} of {canary.get('pipeline') or '?'} SUCCEEDED"
        case "canary.failed":
            return f"{canary.get('reason', '?')}"
        case "approval.requested":
            approval = run.get("approval") or {}
            return (
                f"waiting for {', '.join(approval.get('approvers') or ['?'])} until {approval.get('expires_at', '?')}"
            )
        case "delivery.cleared":
            approval = run.get("approval") or {}
            if approval.get("decision") == "approve":
                return f"approved by {approval.get('by')}: {approval.get('reason', '')}"
            return "no approval required"
        case "run.rejected":
            approval = run.get("approval") or {}
            if approval.get("decision") == "expired":
                return f"no decision before {approval.get('expires_at', '?')}"
            return f"rejected by {approval.get('by', '?')}: {approval.get('reason', '')}"
        case "model.promoted":
            was = promotion.get("previous_run_id") or "no champion before"
            return f"{promotion.get('alias', '?')} → {str(promotion.get('digest', '?'))[:19]}… (was {was})"
    return ""


def gate_rules(gate: dict[str, Any]) -> str:
    """The gate's rules as people read them: ``threshold rmse ≤ 60, r2 ≥ 0.4``."""
    rules = gate.get("metrics") or [gate]
    parts = [
        f"{r.get('metric')} {'≤' if r.get('direction') == 'minimize' else '≥'} {r.get('threshold')}"
        + (f", champion {r['champion_value']:.4f}" if isinstance(r.get("champion_value"), int | float) else "")
        for r in rules
    ]
    return "threshold " + "; ".join(parts)


def event_line(run: dict[str, Any], event: dict[str, Any]) -> str:
    """One line of the timeline: offset from the run's first event, clock time, milestone, detail."""
    events = run.get("events") or []
    start = parse_time(events[0]["time"]) if events else parse_time(event["time"])
    at = parse_time(event["time"])
    name = event["type"].removeprefix(_SHORT).removesuffix(".v1")
    return f"  +{(at - start).total_seconds():7.2f}s  {at:%H:%M:%S}  {name:<20} {_detail(event['type'], run)}"


def rejection_line(rejected: dict[str, Any]) -> str:
    """A message a stage rejected for the run (dead-lettered; the run's status unchanged), with the reason."""
    at = str(rejected.get("at", ""))
    clock = at[11:19] if len(at) >= 19 else at
    return (
        f"  rejected  {clock}  {rejected.get('stage', '?')} dead-lettered message {rejected.get('message_id', '?')}: "
        f"{rejected.get('reason', '')}"
    )


def render(run: dict[str, Any]) -> str:
    """The whole timeline of a run, with its status and error, and the messages rejected for it."""
    lines = [f"run {run.get('run_id')}  model {run.get('model')}  status {str(run.get('status', '?')).upper()}"]
    for event in sorted(run.get("events") or [], key=lambda e: e["time"]):
        lines.append(event_line(run, event))
    rejected = run.get("rejected_messages") or []
    for entry in rejected:
        lines.append(rejection_line(entry))
    if int(run.get("rejected_count") or 0) > len(rejected):
        lines.append(f"  … {int(run['rejected_count']) - len(rejected)} earlier rejected messages not kept")
    dead = run.get("dead_letter") or {}
    if dead:
        lines.append(f"  dead letter ({dead.get('stage', '?')}): {dead.get('reason', '')}")
    for refused in (run.get("approval") or {}).get("refused") or []:
        lines.append(
            f"  refused {refused.get('decision')} by {refused.get('by')} at {refused.get('at')}: {refused.get('why')}"
        )
    if run.get("error"):
        lines.append(f"  error ({run['error'].get('stage', '?')}): {run['error'].get('message', '')}")
    lines.extend(explain_cache(run))
    return "\n".join(lines)


def explain_cache(run: dict[str, Any]) -> list[str]:
    """Why the run trained, reused or was skipped: each cache decision with its key and its twin run."""
    cache = run.get("cache") or {}
    if not cache:
        return []
    if cache.get("enabled") is False:
        return [f"  cache: off, by {cache.get('disabled_by', '?')}: trained, built and delivered anew"]
    lines = []
    for part in ("training", "image"):
        decision = cache.get(part) or {}
        if decision:
            key = str(decision.get("key", ""))
            twin = f" from run {decision['reused_from']}" if decision.get("reused_from") else ""
            lines.append(
                f"  cache {part}: {decision.get('decision', '?')}{twin}"
                + (f" (key {key[:16]}…)" if key else "")
                + (f": {decision['reason']}" if decision.get("reason") else "")
            )
    skipped = cache.get("skipped") or {}
    if skipped:
        lines.append(f"  skipped: {skipped.get('reason', '')}")
    return lines
