"""The evaluation gate: a pure decision on metrics, thresholds and the champion's metrics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cd4ml.manifest import Evaluation


@dataclass(frozen=True)
class Decision:
    """Whether the candidate passes, why not, and everything the decision used."""

    passed: bool
    reasons: tuple[str, ...]
    metric: str
    value: float | None
    threshold: float
    champion_value: float | None
    max_regression: float
    champion_run: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "max_regression": self.max_regression,
            "champion_value": self.champion_value,
            "champion_run": self.champion_run,
            "passed": self.passed,
            "reasons": list(self.reasons),
        }


def decide(metrics: Mapping[str, float], rule: Evaluation, champion: Mapping[str, Any] | None) -> Decision:
    """Pass when ``metric`` ≥ threshold and ≥ the champion's value less ``max_regression``."""
    reasons: list[str] = []
    value = metrics.get(rule.metric)
    champion_metrics = (champion or {}).get("metrics") or {}
    champion_value = champion_metrics.get(rule.metric)
    if value is None:
        reasons.append(
            f"metric {rule.metric!r} missing from the candidate's metrics ({', '.join(sorted(metrics)) or 'none'})"
        )
    else:
        if value < rule.threshold:
            reasons.append(f"{rule.metric} {value:.4f} is below the threshold {rule.threshold:.4f}")
        if champion_value is not None and value < champion_value - rule.max_regression:
            reasons.append(
                f"{rule.metric} {value:.4f} regresses against champion {champion.get('run_id') if champion else ''} "
                f"({champion_value:.4f}) by more than {rule.max_regression:.4f}"
            )
    return Decision(
        passed=not reasons,
        reasons=tuple(reasons),
        metric=rule.metric,
        value=value,
        threshold=rule.threshold,
        champion_value=champion_value,
        max_regression=rule.max_regression,
        champion_run=(champion or {}).get("run_id"),
    )
