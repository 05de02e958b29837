"""Firestore operations per run, as production bills them: read from the functions' ``firestore operations`` lines.

Every function of the bench's stack runs with ``runtime.METER`` set, so ``runtime.dispatch`` logs the reads, writes
and commits each handled message cost (``store.Counting``, counted on the handler's thread: a lease renewed by
the heartbeat thread of an act longer than a quarter lease is not in them; the bench's runs have none). A
message names its run (``run_id``); a tick names none, and its sweep's reads are shared by the runs in flight.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LINE = "firestore operations"


@dataclass(frozen=True)
class PerRun:
    """Mean Firestore operations per run over ``runs`` runs: all of them, by stage, and the ticks' in the window."""

    runs: int
    reads: float
    writes: float
    commits: float
    by_stage: dict[str, dict[str, float]]
    tick_reads: float
    tick_writes: float

    def text(self) -> str:
        return (
            f"Firestore per run: {self.reads:.1f} reads, {self.writes:.1f} writes ({self.commits:.1f} commits) "
            f"in its messages; ticks meanwhile {self.tick_reads:.1f} reads, {self.tick_writes:.1f} writes per run"
        )


def lines(log_dir: Path) -> Iterable[dict[str, Any]]:
    """Every ``firestore operations`` line of the stack's logs."""
    for path in sorted(log_dir.glob("*.log")):
        with path.open(errors="replace") as log:
            for text in log:
                if LINE not in text:
                    continue
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue
                if entry.get("message") == LINE:
                    yield entry


def per_run(log_dir: Path, run_ids: Sequence[str], start: str, end: str) -> PerRun:
    """Mean operations per run of ``run_ids``; ticks (no run) logged between ``start`` and ``end`` are shared."""
    wanted = set(run_ids)
    totals = {"reads": 0, "writes": 0, "commits": 0}
    stages: dict[str, dict[str, float]] = defaultdict(lambda: {"reads": 0.0, "writes": 0.0, "messages": 0.0})
    ticks = {"reads": 0, "writes": 0}
    for entry in lines(log_dir):
        run = str(entry.get("run_id") or "")
        if run in wanted:
            for key in totals:
                totals[key] += int(entry.get(key) or 0)
            stage = stages[str(entry.get("stage") or "?")]
            stage["reads"] += int(entry.get("reads") or 0)
            stage["writes"] += int(entry.get("writes") or 0)
            stage["messages"] += 1
        elif not run and start <= str(entry.get("time") or "") <= end:
            ticks["reads"] += int(entry.get("reads") or 0)
            ticks["writes"] += int(entry.get("writes") or 0)
    n = max(1, len(wanted))
    return PerRun(
        runs=len(wanted),
        reads=totals["reads"] / n,
        writes=totals["writes"] / n,
        commits=totals["commits"] / n,
        by_stage={name: {k: round(v / n, 2) for k, v in tally.items()} for name, tally in sorted(stages.items())},
        tick_reads=ticks["reads"] / n,
        tick_writes=ticks["writes"] / n,
    )
