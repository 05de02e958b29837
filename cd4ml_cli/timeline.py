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
            return f"model sha256 {str(art.get('sha256', ''))[:12]}… at {art.get('uri', '?')}"
        case "training.failed":
            return f"{tr.get('state', '?')}: {tr.get('error', '?')}"
        case "evaluation.passed" | "evaluation.failed":
            gate = ev.get("gate") or {}
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in (ev.get("metrics") or {}).items())
            verdict = f"threshold {gate.get('metric')} ≥ {gate.get('threshold')}"
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
            return f"{image.get('reference', '?')}"
        case "image.failed":
            return f"{image.get('status', '?')}: {image.get('error', '?')}"
        case "canary.triggered":
            return f"Spinnaker event {canary.get('event_id', '?')}, execution {canary.get('execution_id', '?')}"
        case "canary.succeeded":
            return f"execution {canary.get('execution_id', '?')} of {canary.get('pipeline') or '?'} SUCCEEDED"
        case "canary.failed":
            return f"{canary.get('reason', '?')}"
        case "model.promoted":
            was = promotion.get("previous_run_id") or "no champion before"
            return f"{promotion.get('alias', '?')} → {str(promotion.get('digest', '?'))[:19]}… (was {was})"
    return ""


def event_line(run: dict[str, Any], event: dict[str, Any]) -> str:
    """One line of the timeline: offset from the run's first event, clock time, milestone, detail."""
    events = run.get("events") or []
    start = parse_time(events[0]["time"]) if events else parse_time(event["time"])
    at = parse_time(event["time"])
    name = event["type"].removeprefix(_SHORT).removesuffix(".v1")
    return f"  +{(at - start).total_seconds():7.2f}s  {at:%H:%M:%S}  {name:<20} {_detail(event['type'], run)}"


def render(run: dict[str, Any]) -> str:
    """The whole timeline of a run, with its status and error."""
    lines = [f"run {run.get('run_id')}  model {run.get('model')}  status {str(run.get('status', '?')).upper()}"]
    for event in sorted(run.get("events") or [], key=lambda e: e["time"]):
        lines.append(event_line(run, event))
    if run.get("error"):
        lines.append(f"  error ({run['error'].get('stage', '?')}): {run['error'].get('message', '')}")
    return "\n".join(lines)
