"""An execution as Orca reports it (``GET /pipelines/{id}``), derived from what the Gate test double stored.

Stages run one after another through Orca's ExecutionStatus values (NOT_STARTED, RUNNING, SUCCEEDED); the
execution ends as its outcome says (SUCCEEDED, or TERMINAL / CANCELED / STOPPED at a stage), or never
(RUNNING), so a test can choose a canary's verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def render_execution(record: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """The execution as Orca reports it at ``now_ms``: stages run one after another (NOT_STARTED, RUNNING,
    SUCCEEDED), and the execution ends as its outcome says, at the outcome's stage (TERMINAL, CANCELED or
    STOPPED there, NOT_STARTED after it); a RUNNING outcome never ends."""
    rendered = {k: v for k, v in record.items() if not k.startswith("_")}
    stages = list(record["stages"])
    outcome = record.get("_outcome") or {"status": "SUCCEEDED", "stage": ""}
    names = [stage["name"] for stage in stages]
    last = names.index(outcome["stage"]) if outcome["stage"] in names else len(stages) - 1
    if outcome["status"] == "RUNNING":
        last = len(stages)  # never reaches its end
    per_stage = max(int(record["_durationMs"]) // max(len(stages), 1), 1)
    start = int(record["startTime"])
    elapsed = now_ms - start
    out = []
    ended_at: int | None = None
    status = "RUNNING"
    for n, stage in enumerate(stages):
        begins, ends = start + n * per_stage, start + (n + 1) * per_stage
        if outcome["status"] == "RUNNING" and n == len(stages) - 1:
            out.append({**stage, "status": "RUNNING", "startTime": begins, "endTime": None})
            break
        if n > last or elapsed < n * per_stage:
            out.append({**stage, "status": "NOT_STARTED", "startTime": None, "endTime": None})
        elif elapsed < (n + 1) * per_stage:
            out.append({**stage, "status": "RUNNING", "startTime": begins, "endTime": None})
        elif n == last and outcome["status"] != "SUCCEEDED":
            out.append({**stage, "status": outcome["status"], "startTime": begins, "endTime": ends})
            status, ended_at = outcome["status"], ends
        else:
            out.append({**stage, "status": "SUCCEEDED", "startTime": begins, "endTime": ends})
            if n == len(stages) - 1:
                status, ended_at = "SUCCEEDED", ends
    rendered.update({"status": status, "endTime": ended_at, "stages": out, "canceled": status == "CANCELED"})
    return rendered
