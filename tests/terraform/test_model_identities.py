"""One build and one training identity per model, generated from the manifests: each touches its own model only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cd4ml import identities

from .evaluate import evaluate
from .test_approvers import _manifests


def _per_model(manifests_dir: Path) -> dict[str, Any]:
    return evaluate(
        {
            "accounts": "local.model_accounts",
            "clashes": "local.model_name_clashes",
            "writers": '[for g in local.iam_plan : "${g.member} ${g.target}" if g.kind == "repository"'
            ' && g.role != "roles/artifactregistry.reader"]',
            "prefixes": '{for g in local.iam_plan : g.key => g.condition.title if startswith(g.member, "model_")'
            " && g.condition != null}",
            "act_as": '[for g in local.iam_plan : "${g.member} ${g.target}" if g.role == "roles/iam.serviceAccountUser"]',
        },
        variables={"manifests_dir": str(manifests_dir)},
    )


def test_each_model_gets_accounts_named_as_the_functions_name_them(tmp_path: Path) -> None:
    long = "a-very-long-model-name-of-forty-letters"
    found = _per_model(_manifests(tmp_path, {"alpha": None, "beta": None, long: None}))
    assert found["accounts"] == {
        model: {"build": identities.account_id("build", model), "train": identities.account_id("train", model)}
        for model in ("alpha", "beta", long)
    }
    assert found["accounts"]["alpha"] == {"build": "cd4ml-build-alpha", "train": "cd4ml-train-alpha"}
    assert all(
        len(a) <= 30 and not a.endswith("-") for accounts in found["accounts"].values() for a in accounts.values()
    )


def test_a_models_build_writes_its_own_repository_and_trainer_its_own_prefixes(tmp_path: Path) -> None:
    found = _per_model(_manifests(tmp_path, {"alpha": None, "beta": None}))
    assert sorted(found["writers"]) == [
        "function:promote model_repository:alpha",
        "function:promote model_repository:beta",
        "model_build:alpha model_repository:alpha",
        "model_build:beta model_repository:beta",
    ]
    titles = {key.split("/")[0] + " " + key.split("/")[1]: title for key, title in found["prefixes"].items()}
    assert titles["build_reads_context alpha"] == "only builds/alpha-"
    assert titles["training_writes_models beta"] == "only runs/beta-"
    assert titles["training_reads_datasets alpha"] == "only datasets/alpha/"
    assert sorted(found["act_as"]) == [
        "function:build_image service_account:model_build:alpha",
        "function:build_image service_account:model_build:beta",
        "function:submit_training service_account:model_training:alpha",
        "function:submit_training service_account:model_training:beta",
    ]


def test_model_names_that_would_share_run_prefixes_are_named(tmp_path: Path) -> None:
    found = _per_model(_manifests(tmp_path, {"alpha": None, "alpha-2": None, "beta": None}))
    assert found["clashes"] == ["alpha-2 starts with alpha-"]
