"""A run served from the caches against a full run of the same model, data and code (target: < 0.5×).

The full run trains (Vertex), builds (Cloud Build), runs its canary and is promoted; the next run on the same data
reuses that training (no job) and, its model being the champion's, ends ``skipped`` (no build, no canary). Each run's
time is from run.requested to the event that ended it, both stamped by the stages.
"""

from __future__ import annotations

from typing import Any

from benchmarks.pipeline import CACHED_MODEL, Pipeline, say
from benchmarks.report import Check, Section
from cd4ml.events import parse_time

TARGET = "cache"
LIMIT = 0.5


def duration(record: dict[str, Any]) -> float:
    """Seconds from the run's first event (run.requested) to its last."""
    times = sorted(parse_time(e["time"]) for e in record.get("events") or [])
    return (times[-1] - times[0]).total_seconds() if len(times) > 1 else float("nan")


def measure(pipeline: Pipeline, timeout: float) -> Section:
    say("cache: a full run, then one on the same data and code")
    [full_id] = pipeline.request(1, CACHED_MODEL)
    full = pipeline.wait([full_id], timeout)[full_id]
    [cached_id] = pipeline.request(1, CACHED_MODEL)
    cached = pipeline.wait([cached_id], timeout)[cached_id]
    full_s, cached_s = duration(full), duration(cached)
    ratio = cached_s / full_s if full_s > 0 else float("inf")
    reused = ((cached.get("cache") or {}).get("training") or {}).get("reused_from", "")
    checks = (
        Check(
            TARGET,
            "full run delivered, cached run skipped",
            f"{full.get('status')}, {cached.get('status')} (reused from {reused or 'nothing'})",
            "succeeded, skipped",
            full.get("status") == "succeeded" and cached.get("status") == "skipped" and reused == full_id,
        ),
        Check(
            TARGET,
            "cached run / full run",
            f"{ratio:.2f} ({cached_s:.1f} / {full_s:.1f} s)",
            f"< {LIMIT:.1f}",
            ratio < LIMIT,
            value=ratio,
            limit_value=LIMIT,
        ),
    )
    return Section(
        target=TARGET,
        definition="run time = last event − run.requested, of a full run and of the next run on the same data",
        checks=checks,
        notes=tuple(
            f"{name} run {r.get('run_id')} {r.get('status')}: {(r.get('error') or {}).get('message', '')[:300]}"
            for name, r in (("full", full), ("cached", cached))
            if r.get("status") not in ("succeeded", "skipped")
        ),
        data={"full_s": full_s, "cached_s": cached_s, "full_run": full_id, "cached_run": cached_id},
    )
