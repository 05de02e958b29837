"""Who may decide approvals, and by which policy: the approvers the repository's manifests name may invoke the
decision endpoint and nothing else; the policy the functions enforce is derived from the same manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cd4ml import catalog
from cd4ml.approval_policy import Policy

from .evaluate import REPO, evaluate

ALICE, BOT, BOB = "user:alice@example.com", "serviceAccount:bot@p.iam.gserviceaccount.com", "user:bob@example.com"


def _manifests(tmp: Path, approvals: dict[str, Any]) -> Path:
    """A manifests_dir with one copy of the example per entry, its `approval` section set (or left out)."""
    example = yaml.safe_load((REPO / "examples" / "digits" / "manifest.yaml").read_text())
    for name, approval in approvals.items():
        folder = tmp / name
        folder.mkdir(parents=True)
        manifest = {**example, "name": name}
        manifest.pop("approval", None)
        if approval is not None:
            manifest["approval"] = approval
        (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return tmp


def _derived(manifests_dir: Path) -> dict[str, Any]:
    return evaluate(
        {
            "grants": '[for g in local.iam_plan : g if g.rule == "invoke_decision_endpoint"]',
            "approver_grants": '[for g in local.iam_plan : g if startswith(g.member, "approver:")]',
            "policy": "jsonencode(local.approval_policy)",
            "decision_url": "local.decision_url",
            "http_stages": "local.http_stages",
            "subscribed": '[for k, s in local.stage_subscriptions : s.stage if s.stage == "decide_approval"]',
        },
        variables={"manifests_dir": str(manifests_dir)},
    )


GATED = {
    "gated": {"required": True, "approvers": [ALICE, BOT], "expires_after": "30m"},
    "also-gated": {"required": True, "approvers": [ALICE, BOB]},
    "optional": {"required": False, "approvers": ["user:mallory@example.com"]},
    "ungated": None,
}


def test_each_named_approver_may_invoke_the_decision_endpoint_and_nothing_else(tmp_path: Path) -> None:
    found = _derived(_manifests(tmp_path, GATED))
    grants = found["grants"]
    assert sorted(g["member"] for g in grants) == [f"approver:{BOT}", f"approver:{ALICE}", f"approver:{BOB}"]
    assert {(g["role"], g["kind"], g["target"]) for g in grants} == {
        ("roles/run.invoker", "run_service", "run_service:decide_approval")
    }
    assert found["approver_grants"] == grants, "an approver gets nothing but the endpoint (no topic, no publisher)"


def test_the_deployed_policy_is_the_repositorys_manifests_as_the_functions_read_it(tmp_path: Path) -> None:
    found = _derived(_manifests(tmp_path, GATED))
    policy = Policy.of(found["policy"])
    assert set(policy.rules) == {"gated", "also-gated"}, "optional and ungated models wait for nobody"
    gated = policy.rule("gated")
    assert gated is not None and gated.approvers == (ALICE, BOT) and gated.expires_after.total_seconds() == 1800
    assert json.loads(found["policy"])["also-gated"]["expires_after"] == "72h"


def test_the_decision_endpoint_is_http_with_no_subscription_and_a_known_url(tmp_path: Path) -> None:
    found = _derived(_manifests(tmp_path, GATED))
    assert found["http_stages"] == [s.name for s in catalog.load().stages if s.http] == ["decide_approval"]
    assert found["subscribed"] == [], "nobody can reach it through a topic"
    assert found["decision_url"] == "https://us-central1-cd4ml-example.cloudfunctions.net/cd4ml-decide-approval"


def test_without_gated_models_nobody_may_decide(tmp_path: Path) -> None:
    found = _derived(_manifests(tmp_path, {"ungated": None}))
    assert found["grants"] == [] and Policy.of(found["policy"]).rules == {}


def test_the_functions_that_enforce_approval_get_the_policy_and_the_endpoint_admits_everyone_to_its_own_check(
    module: Path,
) -> None:
    main = (module / "main.tf").read_text()
    assert "CD4ML_APPROVAL_POLICY          = jsonencode(local.approval_policy)" in main
    assert (
        'CD4ML_DECISION_AUDIENCES       = join(",", concat([local.decision_url], var.decision_user_audiences))' in main
    )
    functions = (module / "functions.tf").read_text()
    assert 'contains(local.http_stages, each.key) ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"' in functions
    for stage in ("clear_delivery", "decide_approval", "watch_approvals"):
        assert "CD4ML_APPROVAL_POLICY" in catalog.load().stage(stage).env
    assert "CD4ML_DECISION_AUDIENCES" in catalog.load().stage("decide_approval").env
    assert '{ for a in local.approvers : "approver:${a}" => a }' in (module / "iam.tf").read_text()
