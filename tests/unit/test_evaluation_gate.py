"""The evaluation gate: thresholds and regression against the champion."""

from __future__ import annotations

from cd4ml.evaluation_gate import decide
from cd4ml.manifest import Evaluation

RULE = Evaluation(metric="accuracy", threshold=0.9, max_regression=0.02)


def test_passes_above_threshold_without_champion() -> None:
    decision = decide({"accuracy": 0.95}, RULE, None)
    assert decision.passed and decision.reasons == ()


def test_fails_below_threshold_and_records_both_numbers() -> None:
    decision = decide({"accuracy": 0.85}, RULE, None)
    assert not decision.passed
    assert decision.value == 0.85 and decision.threshold == 0.9
    assert "below the threshold" in decision.reasons[0]


def test_regression_beyond_tolerance_fails_within_tolerance_passes() -> None:
    champion = {"run_id": "digits-1", "metrics": {"accuracy": 0.98}}
    assert decide({"accuracy": 0.965}, RULE, champion).passed
    worse = decide({"accuracy": 0.95}, RULE, champion)
    assert not worse.passed and "regresses against champion digits-1" in worse.reasons[0]


def test_missing_metric_is_a_reason() -> None:
    decision = decide({"f1": 0.99}, RULE, None)
    assert not decision.passed and "missing" in decision.reasons[0]
