"""`cd4ml model init`'s templates: a valid manifest, code that compiles, a server that predicts as the model says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from cd4ml_cli import templates

from cd4ml.errors import Cd4mlError
from cd4ml.manifest import MINIMIZE, loads


@pytest.mark.parametrize("kind", list(templates.TEMPLATES))
def test_each_template_has_a_valid_manifest_and_python_that_compiles(kind: str) -> None:
    made = templates.files("churn-model", kind)
    manifest = loads(made["manifest.yaml"])
    assert manifest.name == "churn-model" and manifest.canary_pipeline == "churn-model-canary"
    assert manifest.training.package_uris == ("packages/churn-model/trainer-0.1.0.tar.gz",)
    for path, text in made.items():
        if path.endswith(".py"):
            compile(text, path, "exec")
    rule = manifest.evaluation.rules[0]
    if kind == "sklearn-regressor":
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
