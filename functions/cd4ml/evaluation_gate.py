"""The evaluation gate: a pure decision on metrics, their directions, thresholds and the champion's metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cd4ml.manifest import MINIMIZE, Evaluation, MetricRule


def _num(value: float) -> str:
    """A metric as people read it: four decimals, or four significant digits for tiny values."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.4g}"


@dataclass(frozen=True)
class MetricDecision:
    """One metric's verdict and every number it used."""

    rule: MetricRule
    value: float | None
    champion_value: float | None
    allowed_regression: float | None
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.rule.metric,
            "direction": self.rule.direction,
            "value": self.value,
            "threshold": self.rule.threshold,
            "max_regression": self.rule.max_regression,
            "max_regression_relative": self.rule.max_regression_relative,
            "champion_value": self.champion_value,
            "allowed_regression": self.allowed_regression,
            "passed": self.passed,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Decision:
    """Whether the candidate passes every metric's rule, why not, and everything the decision used."""

    metrics: tuple[MetricDecision, ...]
    champion_run: str | None

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r for m in self.metrics for r in m.reasons)

    @property
    def primary(self) -> MetricDecision:
        """The first metric's verdict: what a one-line summary (and older readers of the record) shows."""
        return self.metrics[0]

    @property
    def value(self) -> float | None:
        return self.primary.value

    @property
    def threshold(self) -> float:
        return self.primary.rule.threshold

    @property
    def champion_value(self) -> float | None:
        return self.primary.champion_value

    def to_dict(self) -> dict[str, Any]:
        """The primary metric's numbers at the top level (as before several metrics), every metric under ``metrics``."""
        return {
            **{k: v for k, v in self.primary.to_dict().items() if k != "reasons"},
            "champion_run": self.champion_run,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "metrics": [m.to_dict() for m in self.metrics],
        }


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _judge(
    rule: MetricRule, metrics: Mapping[str, float], champion_metrics: Mapping[str, Any], champion_run: str | None
) -> MetricDecision:
    """One metric against its threshold and the champion's value, in the rule's direction."""
    value = metrics.get(rule.metric)
    champion_value = _number(champion_metrics.get(rule.metric))
    if champion_value is not None and not math.isfinite(champion_value):
        champion_value = None
    allowed = rule.allowed_regression(champion_value) if champion_value is not None else None
    name, lower = rule.metric, rule.direction == MINIMIZE
    better = "lower is better" if lower else "higher is better"
    reasons: list[str] = []
    if value is None:
        reasons.append(f"metric {name!r} missing from the candidate's metrics ({', '.join(sorted(metrics)) or 'none'})")
    elif not math.isfinite(value):
        reasons.append(f"{name} is {value}, not a number the gate can judge")
    else:
        if (value > rule.threshold) if lower else (value < rule.threshold):
            side = "above" if lower else "below"
            reasons.append(f"{name} {_num(value)} is {side} the threshold {_num(rule.threshold)} ({better})")
        if champion_value is not None and allowed is not None:
            worse_by = (value - champion_value) if lower else (champion_value - value)
            if worse_by > allowed + 1e-12:
                relative = (
                    f" ({rule.max_regression_relative:g} of the champion's value)"
                    if rule.max_regression_relative is not None
                    else ""
                )
                reasons.append(
                    f"{name} {_num(value)} regresses against champion {champion_run or '?'} ({_num(champion_value)}) "
                    f"by {_num(worse_by)}, more than the allowed {_num(allowed)}{relative} ({better})"
                )
    return MetricDecision(rule, value, champion_value, allowed, tuple(reasons))


def decide(metrics: Mapping[str, float], rule: Evaluation, champion: Mapping[str, Any] | None) -> Decision:
    """Pass when every metric clears its threshold and is no worse than the champion's by more than allowed,
    "worse" and "clears" read in the metric's direction (maximize: higher is better; minimize: lower)."""
    champion_metrics = (champion or {}).get("metrics") or {}
    champion_run = (champion or {}).get("run_id")
    return Decision(
        metrics=tuple(_judge(r, metrics, champion_metrics, champion_run) for r in rule.rules),
        champion_run=champion_run,
    )
