"""`cd4ml model init`'s templates: a valid manifest, code that compiles, a server that predicts as the model says."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from cd4ml_cli import templates

from cd4ml.errors import Cd4mlError
from cd4ml.manifest import MINIMIZE, loads


@pytest.mark.parametrize("kind", list(templates.TEMPLATES))
def test_each_template_has_a_valid_manifest_and_python_that_compiles(kind: str) -> None:
    made = templates.files("churn-model", kind)
    manifest = loads(made["manifest.yaml"])
    assert manifest.name == "churn-model" and manifest.canary_pipeline == "churn-model-canary"
    if kind == "container":  # a trainer image of the model's own repository, built by `cd4ml model push`
        assert manifest.training.package_uris == () and "setup.py" not in made
        assert manifest.training.container_image == "{registry}/churn-model-trainer:latest"
        assert manifest.training.container_dockerfile == "trainer/Dockerfile" and "trainer/Dockerfile" in made
        assert manifest.training.container_command == ("python3", "-m", "trainer.task")
    else:
        assert manifest.training.package_uris == ("packages/churn-model/trainer-0.1.0.tar.gz",)
    for path, text in made.items():
        if path.endswith(".py"):
            compile(text, path, "exec")
    rule = manifest.evaluation.rules[0]
    if kind in ("sklearn-regressor", "container"):
        assert (rule.metric, rule.direction, rule.max_regression_relative) == ("rmse", MINIMIZE, 0.02)
        assert manifest.smoke is not None and manifest.smoke.abs_tolerance == 100
    else:
        assert (rule.metric, rule.direction) == ("accuracy", "maximize")


def test_the_template_server_predicts_as_the_linear_model_says(tmp_path: Path) -> None:
    (tmp_path / "serve.py").write_text(templates.files("m", "sklearn-classifier")["serving/serve.py"])
    spec = importlib.util.spec_from_file_location("template_serve", tmp_path / "serve.py")
    assert spec is not None and spec.loader is not None
    serve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve)
    regressor = {"kind": "linear-regressor", "features": ["a", "b"], "coef": [2.0, -1.0], "intercept": 0.5}
    assert serve.predict(regressor, [3, 1]) == 5.5
    three = {
        "kind": "linear-classifier",
        "features": ["a"],
        "classes": [0, 1, 2],
        "coef": [[-1.0], [0.0], [1.0]],
        "intercept": [0.0, 0.5, 0.0],
    }
    assert [serve.predict(three, [x]) for x in (-2, 0, 2)] == [0, 1, 2]
    binary = {"kind": "linear-classifier", "features": ["a"], "classes": [3, 7], "coef": [[1.0]], "intercept": [-1.0]}
    assert [serve.predict(binary, [x]) for x in (0, 2)] == [3, 7]
    with pytest.raises(ValueError, match="each instance needs 1 numbers"):
        serve.predict(binary, [1, 2])


def test_a_bad_name_or_an_occupied_folder_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(Cd4mlError, match="use lowercase letters, digits and dashes"):
        templates.create("Churn!", "sklearn-classifier", tmp_path / "x")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(Cd4mlError, match="exists and is not empty: choose another --dir"):
        templates.create("churn", "sklearn-classifier", tmp_path / "taken")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def _container_trainer(tmp_path: Path) -> object:
    (tmp_path / "container_task.py").write_text(templates.files("m", "container")["trainer/task.py"])
    spec = importlib.util.spec_from_file_location("container_task", tmp_path / "container_task.py")
    assert spec is not None and spec.loader is not None
    task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(task)
    return task


def test_the_container_trainer_fits_a_ridge_regression_with_the_standard_library(tmp_path: Path) -> None:
    task: Any = _container_trainer(tmp_path)
    x = [[float(a), float((a * 7) % 5)] for a in range(40)]
    y = [2.0 * a - 1.0 * b + 0.5 for a, b in x]
    model = task.fit(x, y, 1e-9)
    assert [round(c, 6) for c in model["coef"]] == [2.0, -1.0] and round(model["intercept"], 6) == 0.5
    assert task.evaluate(model, x, y)["rmse"] < 1e-6
    shrunk = task.fit(x, y, 1000.0)  # the penalty pulls the coefficients towards zero, as Ridge's alpha does
    assert abs(shrunk["coef"][0]) < 2.0
    first = task.split(x, y, 0.25, 7)
    assert first == task.split(x, y, 0.25, 7) and len(first[1]) == 10 and len(first[0]) == 30


def test_the_container_trainer_reads_the_snapshot_and_writes_the_model_and_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task: Any = _container_trainer(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    rows = "\n".join(f"{a},{a % 3},{3 * a - (a % 3)}" for a in range(40))
    (data / "part.csv").write_text("a,b,target\n" + rows + "\n")
    monkeypatch.setenv("CD4ML_DATASET_URI", str(data))
    monkeypatch.setenv("AIP_MODEL_DIR", str(tmp_path / "model"))
    assert task.main(["--test-size=0.25", "--seed=7", "--alpha=0.000001"]) == 0
    report = json.loads((tmp_path / "model" / "metrics.json").read_text())
    saved = (tmp_path / "model" / "model.json").read_bytes()
    assert report["model_sha256"] == hashlib.sha256(saved).hexdigest() and report["metrics"]["rmse"] < 1e-3
    assert json.loads(saved)["features"] == ["a", "b"] and sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "metrics.json",
        "model.json",
    ]
