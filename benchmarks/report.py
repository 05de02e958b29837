"""What the bench found: checks against the targets in docs/architecture.md, a readable table, and the JSON file."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Summary:
    """A distribution in a few numbers (the unit is the caller's)."""

    count: int
    p50: float
    p90: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        data = sorted(values)
        if not data:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        return cls(len(data), percentile(data, 50), percentile(data, 90), statistics.fmean(data), data[0], data[-1])

    def text(self, unit: str, digits: int = 0) -> str:
        f = f"{{:.{digits}f}}"
        return (
            f"p50 {f.format(self.p50)} {unit}, p90 {f.format(self.p90)}, mean {f.format(self.mean)}, "
            f"min {f.format(self.min)}, max {f.format(self.max)} (n={self.count})"
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile of already sorted values, linearly interpolated (numpy's default)."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(k), math.ceil(k)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (k - low)


@dataclass(frozen=True)
class Check:
    """One target checked: what was measured against what its target allows (docs/architecture.md)."""

    target: str
    name: str
    measured: str
    limit: str
    passed: bool
    value: float | None = None
    limit_value: float | None = None


@dataclass(frozen=True)
class Section:
    """The measurements of one target: its checks, lines worth reading, and the raw figures for the JSON."""

    target: str
    definition: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """Every section of one bench run."""

    started_at: str
    duration_s: float
    machine: Mapping[str, Any]
    options: Mapping[str, Any]
    sections: tuple[Section, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for s in self.sections for c in s.checks)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, **asdict(self)}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")

    def table(self) -> str:
        """The checks as an aligned table, then each section's definition and notes."""
        header = ("target", "check", "measured", "limit", "result")
        rows = [header] + [
            (c.target, c.name, c.measured, c.limit, "ok" if c.passed else "MISSED")
            for s in self.sections
            for c in s.checks
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [f"cd4ml bench, {self.started_at}, {self.machine.get('cpus')} CPUs, {self.duration_s:.0f} s", ""]
        for n, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        for s in self.sections:
            lines += ["", f"{s.target}: {s.definition}"]
            lines += [f"  {note}" for note in s.notes]
        missed = sum(not c.passed for s in self.sections for c in s.checks)
        total = sum(len(s.checks) for s in self.sections)
        lines += ["", f"{total - missed}/{total} checks met" + ("" if not missed else f"; {missed} MISSED")]
        return "\n".join(lines)
