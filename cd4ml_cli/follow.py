"""Following a run live (``cd4ml run --wait``, ``cd4ml status RUN --follow``): its milestones, and what went wrong
as it happens — messages a stage rejected for it (``rejected_messages``), a dead letter noted on it, and a request
that never opened a run (dead-lettered by fetch_data: an unknown model, an invalid manifest)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from cd4ml import catalog, clients, ledger
from cd4ml.run import AWAITING_APPROVAL, TERMINAL
from cd4ml.settings import Settings
from cd4ml_cli import reach
from cd4ml_cli.timeline import event_line, rejection_line

#: How often the record is read while following (seconds).
POLL = 0.5
#: How often the first stage's dead letters are looked at while the run is not open yet (seconds).
INTAKE_LOOK = 3.0
#: The stage that opens a run: a request it rejects never becomes a run record.
INTAKE = "fetch_data"


def read_run(db: Any, run_id: str) -> dict[str, Any] | None:
    """The run record, read with the command's bounded retry (a dead Firestore fails in seconds, not minutes)."""
    snap = db.collection(ledger.RUNS).document(run_id).get(retry=reach.retry(), timeout=reach.CALL_TIMEOUT)
    return snap.to_dict() if snap.exists else None


def refused_at_intake(settings: Settings, run_id: str) -> str | None:
    """The reason fetch_data dead-lettered a request for ``run_id`` (it opened no run), or None."""
    from cd4ml_cli.deadletters import held_messages, subscriber

    sub = subscriber()
    path = sub.subscription_path(settings.project, catalog.dead_letter_hold(INTAKE))
    for received in held_messages(sub, path):
        attributes = dict(received.message.attributes)
        if attributes.get("ce-subject") == run_id:
            return str(attributes.get("cd4ml-error", "(delivery attempts exhausted)"))
    return None


def follow(settings: Settings, run_id: str, timeout: float, as_json: bool) -> int:
    """Print the run's timeline as it grows until it ends; 0 succeeded or skipped, 1 failed/rejected, 3 timed out."""
    db = clients.firestore_client(settings)
    out: TextIO = sys.stderr if as_json else sys.stdout
    shown: set[str] = set()
    started = time.monotonic()
    deadline = started + timeout
    looked = started
    record: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        record = read_run(db, run_id)
        if record:
            _show_new(record, shown, out)
            if record.get("status") in TERMINAL:
                break
            if record.get("status") == AWAITING_APPROVAL and "approval" not in shown:
                shown.add("approval")
                print(f"  waiting: cd4ml approve {run_id} --reason …  |  cd4ml reject {run_id} --reason …", file=out)
        elif time.monotonic() - looked >= INTAKE_LOOK:
            looked = time.monotonic()
            refused = refused_at_intake(settings, run_id)
            if refused is not None:
                print(
                    f"run {run_id} was not started: {INTAKE} rejected its request: {refused} "
                    f"(`cd4ml dead-letters --stage {INTAKE}`)",
                    file=sys.stderr,
                )
                return 1
        time.sleep(POLL)
    if as_json:
        print(
            json.dumps(_ordered(record) if record else {"run_id": run_id, "status": "unknown"}, indent=2, default=str)
        )
    if record is None or record.get("status") not in TERMINAL:
        last = _last_problem(record)
        print(
            f"run {run_id}: still {record.get('status') if record else 'not started'} after {timeout:.0f} s"
            + (f"; last problem: {last}" if last else "")
            + f" (`cd4ml status {run_id}`, `cd4ml logs {run_id}`, `cd4ml dead-letters`)",
            file=sys.stderr,
        )
        return 3
    if record["status"] == "skipped":  # nothing new: a finished run, not a failure
        print(f"run {run_id} skipped: {((record.get('cache') or {}).get('skipped') or {}).get('reason', '')}", file=out)
        return 0
    if record["status"] != "succeeded":
        error = record.get("error") or {}
        print(f"run {run_id} {record['status']}: {error.get('message', 'no reason recorded')}", file=sys.stderr)
        return 1
    print(f"run {run_id} succeeded", file=out)
    return 0


def _show_new(record: dict[str, Any], shown: set[str], out: TextIO) -> None:
    """Each milestone, rejected message and dead letter of the record not printed yet, in time order."""
    lines: list[tuple[str, str, str]] = []
    for event in record.get("events") or []:
        lines.append((event["time"], f"event:{event['id']}", event_line(record, event)))
    for rejected in record.get("rejected_messages") or []:
        key = f"rejected:{rejected.get('stage')}:{rejected.get('message_id')}"
        lines.append((str(rejected.get("at", "")), key, rejection_line(rejected)))
    dead = record.get("dead_letter") or {}
    if dead:
        key = f"dead:{dead.get('stage')}:{dead.get('event_id')}"
        lines.append(
            (str(dead.get("at", "")), key, f"  dead letter ({dead.get('stage', '?')}): {dead.get('reason', '')}")
        )
    for _, key, line in sorted(lines):
        if key not in shown:
            shown.add(key)
            print(line, file=out, flush=True)


def _last_problem(record: dict[str, Any] | None) -> str:
    rejected = (record or {}).get("rejected_messages") or []
    if rejected:
        last = rejected[-1]
        return f"{last.get('stage')} rejected a message: {last.get('reason')}"
    return ""


def _ordered(record: dict[str, Any]) -> dict[str, Any]:
    from cd4ml_cli.main import ordered

    return ordered(record)
