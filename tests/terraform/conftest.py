"""Fixtures of the Terraform checks; every test here is marked `terraform` (needs the terraform binary,
python-hcl2, grpcio-tools and msgpack and, once, PyPI for the providers' cdktn wheels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .evaluate import MODULE, evaluate

_HERE = Path(__file__).resolve().parent

#: Every provider-free local the parity and IAM tests read, evaluated by Terraform in one call.
LOCALS = (
    "catalog",
    "event_types",
    "topic_ids",
    "foreign_topics",
    "notification_topics",
    "stage_slug",
    "dead_letter_topics",
    "function_names",
    "trigger_topic_ids",
    "stage_subscriptions",
    "dead_letter_holds",
    "stage_settings",
    "function_env_names",
    "manifest_files",
    "manifests",
    "schedules",
    "bucket_names",
    "iam_rules",
    "iam_kinds",
    "iam_plan",
    "models",
    "model_accounts",
    "model_name_clashes",
)


#: The web view deployed (ui.tf), so the IAM checks see its grants too.
WITH_UI = {
    "ui_image": "us-central1-docker.pkg.dev/cd4ml-example/cd4ml/cd4ml-ui@sha256:" + "a" * 64,
    "ui_viewers": '["group:ml-team@example.com"]',
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "terraform: needs terraform, python-hcl2, grpcio-tools, msgpack and (once) PyPI; run by nox -s terraform",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.terraform)


@pytest.fixture(scope="session")
def module() -> Path:
    """The root module under test."""
    return MODULE


@pytest.fixture(scope="session")
def tf_locals() -> dict[str, Any]:
    """catalog.tf's locals as Terraform evaluates them (project cd4ml-example, region us-central1, the web view on)."""
    return evaluate({name: f"local.{name}" for name in LOCALS}, variables=WITH_UI)
