"""What the chaos session counts after the faults: effects at the external systems and in the ledger, and how
each bad input was answered."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cd4ml_cli.deadletters import held_messages
from cd4ml_cli.deadletters import subscriber as _subscriber
from local_emulator.spinnaker import tls as _gate_tls

from benchmarks.chaos.bad_inputs import Case
from benchmarks.concurrency import _builds, _duplicates, _jobs
from benchmarks.pipeline import Pipeline
from cd4ml import catalog

#: The alias the chaos models' promotions move (serving.alias's default).
ALIAS = "champion"


def gate_executions(pipeline: Pipeline) -> Counter[str]:
    """Webhook executions at the Gate stand-in, by the run id in their payload."""
    # Orca's search answers 10 executions unless asked for more (found when 16 runs had succeeded: 6 had "none").
    url = pipeline.stack.endpoints["gate"] + "/applications/*/executions/search?triggerTypes=webhook&size=100000"
    context = _gate_tls.client_context(pipeline.stack.root)  # the stack's Gate authenticates reads (x509)
    with urllib.request.urlopen(url, timeout=30, context=context) as response:
        executions = json.loads(response.read())
    return Counter(str(((e.get("trigger") or {}).get("payload") or {}).get("run_id", "")) for e in executions)


def alias_moves(pipeline: Pipeline) -> Counter[str]:
    """Manifest pushes under an alias tag (``serving.alias``, here ``champion``) at the registry, by image digest:
    the registry's own push notifications, as its gcr bridge logged them."""
    moves: Counter[str] = Counter()
    for line in (pipeline.stack.logs / "registry.log").read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line) if line.startswith("{") else {}
        except json.JSONDecodeError:
            continue
        if entry.get("message") == "published gcr message" and str(entry.get("tag") or "").endswith(f":{ALIAS}"):
            moves[str(entry.get("digest") or "").rsplit("@", 1)[-1]] += 1
    return moves


def effect_counts(pipeline: Pipeline, run_ids: list[str]) -> dict[str, int]:
    """How many effects the external systems hold for these runs (jobs, builds, Gate executions, alias moves)."""
    executions = gate_executions(pipeline)
    return {
        "vertex_jobs": sum(len(v) for v in _jobs(pipeline, run_ids).values()),
        "cloud_builds": sum(len(v) for v in _builds(pipeline, run_ids).values()),
        "gate_executions": sum(executions[r] for r in run_ids),
        "alias_moves": sum(alias_moves(pipeline).values()),
    }


def duplicate_effects(pipeline: Pipeline, records: Mapping[str, dict[str, Any]], run_ids: list[str]) -> list[str]:
    """Every effect found more than once: Vertex jobs, builds, Gate executions, alias moves, events in the ledger."""
    jobs, builds, executions = _jobs(pipeline, run_ids), _builds(pipeline, run_ids), gate_executions(pipeline)
    moves = alias_moves(pipeline)
    problems: list[str] = []
    for run_id in run_ids:
        problems += _duplicates(run_id, records.get(run_id), jobs.get(run_id, []), builds.get(run_id, []))
        succeeded = (records.get(run_id) or {}).get("status") == "succeeded"
        if executions[run_id] > 1 or (succeeded and executions[run_id] != 1):
            problems.append(f"{run_id}: {executions[run_id]} executions at Gate")
        digest = str(((records.get(run_id) or {}).get("image") or {}).get("digest") or "")
        moved = moves[digest] if digest else 0
        # A promotion interrupted and overtaken by a newer run's is not redone (superseded_by): 0 or 1 move.
        superseded = bool(((records.get(run_id) or {}).get("promotion") or {}).get("superseded_by"))
        if moved > 1 or (succeeded and not superseded and moved != 1):
            problems.append(f"{run_id}: alias {ALIAS} moved to its image {moved} times at the registry")
    return problems


def dead_letters(pipeline: Pipeline) -> dict[str, list[dict[str, str]]]:
    """Every held dead letter, by the id of the message it copies: stage and attributes."""
    subscriber = _subscriber()
    found: dict[str, list[dict[str, str]]] = {}
    for stage in catalog.load().stages:
        path = subscriber.subscription_path(pipeline.settings.project, catalog.dead_letter_hold(stage.name))
        for received in held_messages(subscriber, path, quiet_pulls=3):
            attrs = dict(received.message.attributes)
            found.setdefault(attrs.get("cd4ml-original-message-id", ""), []).append({"stage": stage.name, **attrs})
    return found


def log_lines(logs: Path, stage: str) -> list[dict[str, Any]]:
    lines = []
    for line in (logs / f"fn-{stage}.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return lines


def judge(
    case: Case, key: str, letters: Mapping[str, list[dict[str, str]]], logs: Path, answers: Mapping[str, str]
) -> tuple[bool, str]:
    """(handled, what was found) for one bad input sent as ``key`` (message id, or the HTTP answer's key)."""
    if case.expect == "http":
        answer = answers.get(key, "no answer")
        return answer.startswith(case.reason), answer
    lines = log_lines(logs, case.stage)
    if case.expect == "ignored":
        said = [
            str(line.get("message", ""))
            for line in lines
            if line.get("message_id") == key and case.reason in str(line.get("message", ""))
        ]
        copies = letters.get(key, [])
        return bool(said) and not copies, (said[0][:300] if said else "no log line") + (
            f"; but {len(copies)} dead letters" if copies else ""
        )
    copies = [c for c in letters.get(key, []) if c["stage"] == case.stage]
    reasons = {c.get("cd4ml-error", "") for c in copies}
    logged = [line for line in lines if line.get("event_id") == key and line.get("severity") == "ERROR"]
    ok = (
        bool(copies)
        and len(reasons) == 1
        and all(case.reason in r for r in reasons)
        and bool(logged)
        and all(case.reason in str(line.get("message", "")) for line in logged)
        and all(len(r.encode()) <= 1024 for r in reasons)
    )
    found = next(iter(reasons), "no dead letter")[:300]
    return ok, f"{len(copies)} dead letters, {len(logged)} ERROR lines: {found}"


def counted(values: Iterable[bool]) -> tuple[int, int]:
    items = list(values)
    return sum(items), len(items)
