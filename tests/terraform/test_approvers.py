"""Who may publish approval decisions: exactly the approvers the manifests name, on the decision topic only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .evaluate import REPO, evaluate

DECIDED = "cd4ml.approval.decided.v1"


def _manifests(tmp: Path, approvals: dict[str, Any]) -> Path:
    """A manifests_dir with one copy of the example per entry, its `approval` section set (or left out)."""
    example = yaml.safe_load((REPO / "examples" / "digits" / "manifest.yaml").read_text())
    for name, approval in approvals.items():
        folder = tmp / name
        folder.mkdir(parents=True)
        manifest = {**example, "name": name}
        if approval is not None:
            manifest["approval"] = approval
        (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return tmp


def _publishers(manifests_dir: Path) -> dict[str, Any]:
    return evaluate(
        {
            "grants": '[for g in local.iam_plan : g if g.target == "approval_decisions_topic"]',
            "decided_publishers": f'[for g in local.iam_plan : g.member if g.target == "topic:{DECIDED}"]',
        },
        variables={"manifests_dir": str(manifests_dir)},
    )


def test_each_named_approver_may_publish_decisions_and_nobody_else(tmp_path: Path) -> None:
    found = _publishers(
        _manifests(
            tmp_path,
            {
                "gated": {
                    "required": True,
                    "approvers": ["user:alice@example.com", "serviceAccount:bot@p.iam.gserviceaccount.com"],
                },
                "also-gated": {"required": True, "approvers": ["user:alice@example.com", "user:bob@example.com"]},
                "optional": {"required": False, "approvers": ["user:mallory@example.com"]},
                "ungated": None,
            },
        )
    )
    grants = found["grants"]
    assert sorted(g["member"] for g in grants) == [
        "approver:serviceAccount:bot@p.iam.gserviceaccount.com",
        "approver:user:alice@example.com",
        "approver:user:bob@example.com",
    ]
    assert {(g["role"], g["kind"]) for g in grants} == {("roles/pubsub.publisher", "topic")}
    assert found["decided_publishers"] == [], "no function may publish a person's decision"


def test_without_gated_models_no_one_may_publish_decisions(tmp_path: Path) -> None:
    assert _publishers(_manifests(tmp_path, {"ungated": None}))["grants"] == []


def test_the_decision_topic_is_bound_to_the_approvers_members(module: Path) -> None:
    text = (module / "iam.tf").read_text()
    assert '{ for a in local.approvers : "approver:${a}" => a }' in text
    assert f'"approval_decisions_topic" = google_pubsub_topic.event["{DECIDED}"].name' in text
