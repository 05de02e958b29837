"""A model's evaluation metric over its runs, as the geometry of a server-rendered SVG plot.

One point per run that was evaluated (x: when the run opened, y: the gate's metric), the gate's threshold as a
line, the champion's point marked; the axes' ranges always include the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cd4ml.events import parse_time


@dataclass(frozen=True)
class Point:
    """One evaluated run in the plot: its value and where it is drawn."""

    run_id: str
    created_at: str
    value: float
    passed: bool
    champion: bool
    x: float
    y: float


@dataclass(frozen=True)
class Plot:
    """Everything the template draws: points, the threshold's y, the axes' labels."""

    metric: str
    points: tuple[Point, ...]
    threshold: float | None
    threshold_y: float | None
    y_min: float
    y_max: float
    width: float
    height: float
    first: str
    last: str


def plot(
    runs: Sequence[Mapping[str, Any]], champion_run: str | None, width: float = 640.0, height: float = 220.0
) -> Plot | None:
    """The plot of ``runs``' gate metric (None when no run was evaluated)."""
    evaluated = [r for r in runs if ((r.get("evaluation") or {}).get("gate") or {}).get("metric")]
    evaluated.sort(key=lambda r: str(r.get("created_at", "")))
    if not evaluated:
        return None
    latest_gate = evaluated[-1]["evaluation"]["gate"]
    metric = str(latest_gate["metric"])
    threshold = latest_gate.get("threshold")
    rows = [
        (r, float(r["evaluation"]["metrics"][metric]))
        for r in evaluated
        if isinstance((r["evaluation"].get("metrics") or {}).get(metric), int | float)
    ]
    if not rows:
        return None
    values = [v for _, v in rows] + ([float(threshold)] if threshold is not None else [])
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 0.01
    low, high = low - pad, high + pad
    times = [parse_time(str(r["created_at"])).timestamp() for r, _ in rows]
    t0, t1 = min(times), max(times)

    def x_of(t: float) -> float:
        return width / 2 if t1 == t0 else 12 + (t - t0) / (t1 - t0) * (width - 24)

    def y_of(v: float) -> float:
        return height - (v - low) / (high - low) * height

    points = tuple(
        Point(
            run_id=str(r["run_id"]),
            created_at=str(r["created_at"]),
            value=value,
            passed=bool(r["evaluation"].get("passed")),
            champion=r["run_id"] == champion_run,
            x=round(x_of(t), 1),
            y=round(y_of(value), 1),
        )
        for (r, value), t in zip(rows, times, strict=True)
    )
    return Plot(
        metric=metric,
        points=points,
        threshold=float(threshold) if threshold is not None else None,
        threshold_y=round(y_of(float(threshold)), 1) if threshold is not None else None,
        y_min=low,
        y_max=high,
        width=width,
        height=height,
        first=str(rows[0][0]["created_at"]),
        last=str(rows[-1][0]["created_at"]),
    )
