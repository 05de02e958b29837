"""The evaluation gate: thresholds and regression against the champion, in each metric's direction."""

from __future__ import annotations

import math

from cd4ml.evaluation_gate import decide
from cd4ml.manifest import MINIMIZE, Evaluation, MetricRule

RULE = Evaluation.single(metric="accuracy", threshold=0.9, max_regression=0.02)
RMSE = Evaluation((MetricRule("rmse", threshold=60.0, direction=MINIMIZE, max_regression=1.0),))
CHAMPION = {"run_id": "diabetes-1", "metrics": {"rmse": 53.7366, "r2": 0.45}}


def test_passes_above_threshold_without_champion() -> None:
    decision = decide({"accuracy": 0.95}, RULE, None)
    assert decision.passed and decision.reasons == ()


def test_fails_below_threshold_and_records_both_numbers() -> None:
    decision = decide({"accuracy": 0.85}, RULE, None)
    assert not decision.passed
    assert decision.value == 0.85 and decision.threshold == 0.9
    assert "accuracy 0.8500 is below the threshold 0.9000" in decision.reasons[0]


def test_regression_beyond_tolerance_fails_within_tolerance_passes() -> None:
    champion = {"run_id": "digits-1", "metrics": {"accuracy": 0.98}}
    assert decide({"accuracy": 0.965}, RULE, champion).passed
    worse = decide({"accuracy": 0.95}, RULE, champion)
    assert not worse.passed and "regresses against champion digits-1 (0.9800)" in worse.reasons[0]


def test_missing_metric_is_a_reason() -> None:
    decision = decide({"f1": 0.99}, RULE, None)
    assert not decision.passed and "missing" in decision.reasons[0]


def test_a_worse_rmse_is_refused_with_both_numbers() -> None:
    decision = decide({"rmse": 70.57}, RMSE, CHAMPION)
    assert not decision.passed
    assert decision.reasons == (
        "rmse 70.5700 is above the threshold 60.0000 (lower is better)",
        "rmse 70.5700 regresses against champion diabetes-1 (53.7366) by 16.8334, more than the allowed 1.0000 "
        "(lower is better)",
    )
    assert decision.to_dict()["champion_value"] == 53.7366 and decision.to_dict()["direction"] == "minimize"


def test_a_better_rmse_passes_and_a_slightly_worse_one_within_the_allowance() -> None:
    assert decide({"rmse": 50.1}, RMSE, CHAMPION).passed  # lower than the champion's and the threshold
    assert decide({"rmse": 54.5}, RMSE, CHAMPION).passed  # 0.76 worse, 1.0 allowed
    assert decide({"rmse": 50.1}, RMSE, None).passed


def test_a_minimized_metric_below_its_threshold_is_not_refused_as_below() -> None:
    decision = decide({"rmse": 12.0}, RMSE, None)
    assert decision.passed, decision.reasons


def test_a_relative_allowance_is_a_fraction_of_the_champions_value() -> None:
    rule = Evaluation((MetricRule("rmse", 100.0, MINIMIZE, max_regression_relative=0.05),))
    assert decide({"rmse": 56.0}, rule, CHAMPION).passed  # 2.26 worse, 5 % of 53.74 = 2.69 allowed
    refused = decide({"rmse": 57.0}, rule, CHAMPION)
    assert not refused.passed
    assert "by 3.2634, more than the allowed 2.6868 (0.05 of the champion's value)" in refused.reasons[0]


def test_every_metric_is_judged_and_reported() -> None:
    rule = Evaluation(
        (MetricRule("rmse", 60.0, MINIMIZE, max_regression=1.0), MetricRule("r2", 0.4, max_regression=0.01))
    )
    decision = decide({"rmse": 50.0, "r2": 0.3}, rule, CHAMPION)
    assert not decision.passed
    assert [m["metric"] for m in decision.to_dict()["metrics"]] == ["rmse", "r2"]
    assert [m["passed"] for m in decision.to_dict()["metrics"]] == [True, False]
    assert decision.reasons == (
        "r2 0.3000 is below the threshold 0.4000 (higher is better)",
        "r2 0.3000 regresses against champion diabetes-1 (0.4500) by 0.1500, more than the allowed 0.0100 "
        "(higher is better)",
    )


def test_a_metric_that_is_not_a_number_never_passes() -> None:
    decision = decide({"accuracy": math.nan}, RULE, None)
    assert not decision.passed and "not a number the gate can judge" in decision.reasons[0]


def test_status_shows_each_rule_in_its_direction_with_the_champions_number() -> None:
    from cd4ml_cli.timeline import render

    decision = decide({"rmse": 70.57}, RMSE, CHAMPION)
    run = {
        "run_id": "diabetes-2",
        "status": "failed",
        "evaluation": {"metrics": {"rmse": 70.57}, "gate": decision.to_dict(), "reasons": list(decision.reasons)},
        "events": [{"type": "cd4ml.evaluation.failed.v1", "time": "2026-12-07T02:00:00.000Z"}],
    }
    line = render(run).splitlines()[1]
    assert "rmse 70.5700 (threshold rmse ≤ 60.0, champion 53.7366): rmse 70.5700 is above the threshold" in line
