"""Manifests: the example is valid; a bad one is refused with each field and reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cd4ml_models import folder as models

from cd4ml.errors import InvalidManifest
from cd4ml.manifest import loads, parse, resolve_gcs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


def _example() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((EXAMPLE / "manifest.yaml").read_text())  # type: ignore[no-any-return]


def test_the_example_manifest_is_valid() -> None:
    manifest = models.read(EXAMPLE)
    assert manifest.name == "digits"
    assert manifest.training.python_module == "trainer.task"
    assert manifest.evaluation.metric == "accuracy"


def test_a_bad_manifest_names_every_field_and_reason() -> None:
    doc = _example()
    doc["name"] = "Digits!"
    doc["evaluation"].pop("metric")
    doc["training"]["worker_pool"]["replica_count"] = 0
    doc["colour"] = "blue"
    with pytest.raises(InvalidManifest) as caught:
        parse(doc)
    text = caught.value.message
    assert "name: 'Digits!' does not match" in text
    assert "evaluation: metric missing; gate one metric with metric and threshold" in text
    assert "training.worker_pool.replica_count: 0 is less than the minimum of 1" in text
    assert "'colour' was unexpected" in text


def test_training_needs_exactly_one_of_container_or_python_package() -> None:
    doc = _example()
    doc["training"]["container"] = {"image_uri": "gcr.io/x/y"}
    with pytest.raises(InvalidManifest, match="training"):
        parse(doc)


def test_bad_cron_and_time_zone_are_named() -> None:
    doc = _example()
    doc["schedule"] = "61 3 * * *"
    with pytest.raises(InvalidManifest, match="schedule: '61 3 \\* \\* \\*' is not a valid cron expression"):
        parse(doc)
    doc = _example()
    doc["time_zone"] = "Mars/Olympus"
    with pytest.raises(InvalidManifest, match="time_zone"):
        parse(doc)


def test_not_yaml_is_refused() -> None:
    with pytest.raises(InvalidManifest, match="not YAML"):
        loads("name: [unclosed")


def test_scheduled_time_is_the_latest_fire_time_so_duplicates_map_to_one_run() -> None:
    manifest = parse(_example())  # 03:00 UTC daily
    first = manifest.scheduled_time(datetime(2026, 3, 1, 3, 0, 0, 900000, tzinfo=UTC))
    retry = manifest.scheduled_time(datetime(2026, 3, 1, 3, 2, 30, tzinfo=UTC))
    assert first == retry == datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


def test_relative_paths_resolve_inside_the_bucket() -> None:
    assert resolve_gcs("sources/digits/", "data") == "gs://data/sources/digits/"
    assert resolve_gcs("gs://other/x", "data") == "gs://other/x"


def test_the_trainer_package_is_an_sdist_pip_can_read() -> None:
    import io
    import tarfile

    blob = models.sdist(EXAMPLE, "trainer-0.1.0.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = tar.getnames()
    assert "trainer-0.1.0/setup.py" in names
    assert "trainer-0.1.0/trainer/task.py" in names
    assert not any("manifest.yaml" in n or "serving" in n for n in names)
    assert models.sdist(EXAMPLE, "trainer-0.1.0.tar.gz") == blob  # reproducible


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("schedule", "0 0 3 * * *", "schedule: '0 0 3 * * *' has 6 fields"),  # croniter would read seconds
        ("schedule", "0 3 * *", "schedule: '0 3 * *' has 4 fields"),
    ],
)
def test_a_schedule_must_be_cloud_schedulers_five_field_cron(field: str, value: str, reason: str) -> None:
    doc = _example()
    doc[field] = value
    with pytest.raises(InvalidManifest) as refused:
        parse(doc)
    assert any(reason in p for p in refused.value.problems)


def test_an_unknown_direction_is_refused() -> None:
    doc = _example()
    doc["evaluation"]["direction"] = "lower"
    with pytest.raises(InvalidManifest) as refused:
        parse(doc)
    assert any(
        "evaluation.direction: 'lower' is not one of ['maximize', 'minimize']" in p for p in refused.value.problems
    )


def test_an_existing_manifest_keeps_its_meaning_maximize_with_an_absolute_allowance() -> None:
    rule = parse(_example()).evaluation.rules
    assert [(r.metric, r.direction, r.threshold, r.max_regression, r.max_regression_relative) for r in rule] == [
        ("accuracy", "maximize", 0.9, 0.02, None)
    ]


def test_a_minimized_metric_and_several_metrics_are_read() -> None:
    doc = _example()
    doc["evaluation"] = {
        "metrics": [
            {"metric": "rmse", "direction": "minimize", "threshold": 60, "max_regression_relative": 0.05},
            {"metric": "r2", "threshold": -0.5},  # a negative bar is a real one for r2
        ]
    }
    rules = parse(doc).evaluation.rules
    assert [(r.metric, r.direction, r.threshold, r.max_regression, r.max_regression_relative) for r in rules] == [
        ("rmse", "minimize", 60.0, 0.0, 0.05),
        ("r2", "maximize", -0.5, 0.0, None),
    ]


@pytest.mark.parametrize(
    ("evaluation", "reason"),
    [
        (
            {"metric": "rmse", "threshold": 1, "max_regression": 1, "max_regression_relative": 0.1},
            "evaluation: max_regression and max_regression_relative both given",
        ),
        (
            {"metric": "rmse", "threshold": 1, "metrics": [{"metric": "r2", "threshold": 0}]},
            "evaluation: metric, threshold given beside metrics",
        ),
        (
            {"metrics": [{"metric": "r2", "threshold": 0}, {"metric": "r2", "threshold": 1}]},
            "evaluation.metrics: 'r2' is gated twice",
        ),
    ],
)
def test_an_ambiguous_gate_is_refused_with_its_fix(evaluation: dict, reason: str) -> None:  # type: ignore[type-arg]
    doc = _example()
    doc["evaluation"] = evaluation
    with pytest.raises(InvalidManifest) as refused:
        parse(doc)
    assert any(reason in p for p in refused.value.problems), refused.value.problems
