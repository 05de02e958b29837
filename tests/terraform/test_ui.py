"""The web view in production: a private Cloud Run service that its viewers alone may invoke and that reads only."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from . import hcl
from .evaluate import TerraformError, evaluate

IMAGE = "us-central1-docker.pkg.dev/cd4ml-example/cd4ml/cd4ml-ui@sha256:" + "a" * 64
VIEWERS = '["group:ml-team@example.com", "user:oncall@example.com"]'


def _ui_grants(variables: dict[str, str]) -> list[dict[str, Any]]:
    found = evaluate(
        {"grants": '[for g in local.iam_plan : g if contains(["ui_reads_ledger", "ui_viewers_invoke"], g.rule)]'},
        variables=variables,
    )
    return list(found["grants"])


def test_the_viewers_may_invoke_the_service_and_its_account_only_reads_the_ledger() -> None:
    grants = _ui_grants({"ui_image": IMAGE, "ui_viewers": VIEWERS})
    invoke = sorted(
        (g["member"], g["role"], g["kind"], g["target"]) for g in grants if g["rule"] == "ui_viewers_invoke"
    )
    assert invoke == [
        ("ui_viewer:group:ml-team@example.com", "roles/run.invoker", "run_service", "ui_service"),
        ("ui_viewer:user:oncall@example.com", "roles/run.invoker", "run_service", "ui_service"),
    ]
    [read] = [g for g in grants if g["rule"] == "ui_reads_ledger"]
    assert (read["member"], read["role"], read["kind"]) == ("ui", "roles/datastore.viewer", "project")
    assert read["condition"] and "/databases/(default)" in read["condition"]["expression"]


def test_without_an_image_there_is_no_web_view_and_no_grant() -> None:
    assert _ui_grants({"ui_viewers": VIEWERS}) == []


@pytest.mark.parametrize("public", ["allUsers", "allAuthenticatedUsers"])
def test_the_public_cannot_be_made_a_viewer(public: str) -> None:
    with pytest.raises(TerraformError, match="ui_viewers must be IAM principals"):
        _ui_grants({"ui_image": IMAGE, "ui_viewers": f'["{public}"]'})


def test_the_service_is_private_and_runs_as_its_own_account(module: Path) -> None:
    resources = {b.address: b for b in hcl.top_blocks(module) if b.kind == "resource"}
    service = resources["google_cloud_run_v2_service.ui"].body
    template = service["template"][0] if isinstance(service["template"], list) else service["template"]
    assert template["service_account"] == "${google_service_account.ui[0].email}"
    text = "\n".join(p.read_text() for p in module.glob("*.tf"))
    assert not re.search(r'"(allUsers|allAuthenticatedUsers)"', text)  # no public member anywhere
    iam = (module / "iam.tf").read_text()
    assert '{ for service in google_cloud_run_v2_service.ui : "ui_service" => service.name }' in iam
    assert '{ for v in var.ui_viewers : "ui_viewer:${v}" => v }' in iam


def test_the_runs_queries_of_the_web_view_have_their_indexes(module: Path) -> None:
    """cd4ml_ui.queries orders runs by created_at descending, filtered by status, or by model and status."""
    indexes = []
    for block in hcl.top_blocks(module):
        if block.kind == "resource" and block.labels[0] == "google_firestore_index":
            fields = block.body["fields"]
            indexes.append(tuple((f["field_path"], f["order"]) for f in fields))
    newest = ("created_at", "DESCENDING")
    assert (("status", "ASCENDING"), newest) in indexes
    assert (("model", "ASCENDING"), ("status", "ASCENDING"), newest) in indexes
    assert (("model", "ASCENDING"), newest) in indexes
