"""The decision endpoint, driven as Cloud Run would (functions-framework's Flask test client): who decided is the
verified ID token's email; a forged, foreign, expired or missing token, or a ``by`` that is not the token's, is
refused; the deployed policy (not the bucket's manifest) says who approves; decisions apply inside the run's
optimistic write; a decision for a run that does not exist is refused and never applied later."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app
from local_emulator.iam import token_issuer

from cd4ml import events, runtime
from cd4ml.events import format_time, now
from cd4ml.run import AWAITING_APPROVAL
from cd4ml.stages import approval
from tests.stagekit import REPO, Kit, event, manifest

RUN = "gated-20300101t030000z"
OTHER = "other-20300101t030000z"
URL = "https://us-central1-cd4ml-unit.cloudfunctions.net/cd4ml-decide-approval"
ALICE, BOB, MALLORY = "alice@example.com", "bob@example.com", "mallory@example.com"
POLICY = {
    "gated": {"approvers": [f"user:{ALICE}"], "expires_after": "72h"},
    "other": {"approvers": [f"user:{BOB}"], "expires_after": "72h"},
}
ARTIFACT = {"uri": f"gs://a/runs/{RUN}/model/model.joblib", "sha256": "b" * 64}


@dataclass
class Issuers:
    """Google's stand-in (its certificates served over HTTP, as https://www.googleapis.com/oauth2/v1/certs) and a
    second key pair nobody trusts."""

    google: token_issuer.Issuer
    stranger: token_issuer.Issuer
    certs_url: str


@pytest.fixture(scope="module")
def issuers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuers]:
    google = token_issuer.Issuer(tmp_path_factory.mktemp("google"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), token_issuer.handler(google))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Issuers(
            google=google,
            stranger=token_issuer.Issuer(tmp_path_factory.mktemp("stranger")),
            certs_url=f"http://127.0.0.1:{server.server_address[1]}/oauth2/v1/certs",
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def kit(issuers: Issuers) -> Kit:
    kit = Kit(
        "decide_approval",
        approval_policy=json.dumps(POLICY),
        decision_audiences=URL,
        token_certs_url=issuers.certs_url,
    )
    for run_id, model in ((RUN, "gated"), (OTHER, "other")):
        _seed_waiting(kit, run_id, model)
    return kit


def _seed_waiting(kit: Kit, run_id: str, model: str) -> None:
    at = now()
    kit.seed(
        run_id,
        status=AWAITING_APPROVAL,
        model_artifact={**ARTIFACT, "uri": f"gs://a/runs/{run_id}/model/model.joblib"},
        approval={
            "approvers": POLICY[model]["approvers"],
            "requested_at": format_time(at),
            "expires_at": "2099-01-01T00:00:00.000Z",
            "metrics": {"accuracy": 0.97},
            "gate": {},
        },
    )


def _post(kit: Kit, body: Any, token: str | None, authorization: str = "") -> tuple[int, dict[str, Any]]:
    """POST to decide_approval as functions-framework serves it (functions/main.py, HTTP signature)."""
    app = create_app("decide_approval", str(REPO / "functions" / "main.py"), "http")  # type: ignore[no-untyped-call]
    headers = {"Authorization": authorization or f"Bearer {token}"} if token is not None or authorization else {}
    original = runtime.context
    runtime.context = lambda: kit.ctx  # type: ignore[assignment]
    try:
        response = app.test_client().post("/", json=body, headers=headers)
    finally:
        runtime.context = original
    return response.status_code, response.get_json()


def _decision(run_id: str = RUN, verdict: str = "approve", **more: Any) -> dict[str, Any]:
    return {"run_id": run_id, "decision": verdict, "reason": "metrics fine", **more}


def test_an_approvers_token_applies_the_approve_as_the_tokens_email(kit: Kit, issuers: Issuers) -> None:
    status, answer = _post(kit, _decision(), issuers.google.mint(ALICE, URL))
    assert (status, answer["outcome"], answer["by"]) == (200, events.DELIVERY_CLEARED, f"user:{ALICE}")
    run = kit.run(RUN)
    assert run["approval"]["by"] == f"user:{ALICE}" and run["approval"]["decision"] == "approve"
    assert kit.bus.types() == [events.DELIVERY_CLEARED]


def test_a_service_accounts_token_decides_as_that_service_account(kit: Kit, issuers: Issuers) -> None:
    robot = "release-bot@p.iam.gserviceaccount.com"
    policy = json.dumps({"gated": {"approvers": [f"serviceAccount:{robot}"]}})
    kit.ctx.settings = dataclasses.replace(kit.ctx.settings, approval_policy=policy)
    status, answer = _post(kit, _decision(verdict="reject"), issuers.google.mint(robot, URL))
    assert (status, answer["by"], answer["outcome"]) == (200, f"serviceAccount:{robot}", events.RUN_REJECTED)
    assert kit.run(RUN)["status"] == "rejected"


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("missing", "no Authorization header"),
        ("another key", "Could not verify token signature"),
        ("wrong audience", "Token has wrong audience"),
        ("expired", "Token expired"),
        ("not bearer", "is not `Bearer ID_TOKEN`"),
    ],
)
def test_a_token_google_did_not_sign_for_this_endpoint_is_refused_with_the_reason(
    kit: Kit, issuers: Issuers, case: str, why: str
) -> None:
    google = issuers.google
    tokens: dict[str, str | None] = {
        "missing": None,
        # the stranger signs with the key id Google's certificate is served under: only the signature differs
        "another key": token_issuer.sign(issuers.stranger.private_pem, google.key_id, token_issuer.claims(ALICE, URL)),
        "wrong audience": google.mint(ALICE, "https://some-other-service.a.run.app"),
        "expired": token_issuer.sign(
            google.private_pem, google.key_id, token_issuer.claims(ALICE, URL, lifetime=60, issued=1_700_000_000)
        ),
        "not bearer": "",
    }
    if case == "not bearer":
        status, answer = _post(kit, _decision(), None, authorization=f"Basic {ALICE}")
    else:
        status, answer = _post(kit, _decision(), tokens[case])
    assert status == 401 and why in answer["refused"], answer
    assert kit.run(RUN)["status"] == AWAITING_APPROVAL and "refused" not in kit.run(RUN)["approval"]
    assert kit.bus.published == []


def test_a_by_field_naming_the_approver_with_someone_elses_token_is_refused_and_recorded(
    kit: Kit, issuers: Issuers
) -> None:
    status, answer = _post(kit, _decision(by=f"user:{ALICE}"), issuers.google.mint(MALLORY, URL))
    assert status == 403
    assert answer["refused"] == f"the decision names user:{ALICE} but its ID token is user:{MALLORY}'s"
    (refused,) = kit.run(RUN)["approval"]["refused"]
    assert refused["by"] == f"user:{MALLORY}" and refused["why"] == answer["refused"]
    assert kit.run(RUN)["status"] == AWAITING_APPROVAL and kit.bus.published == []


def test_another_models_approver_is_refused_and_recorded(kit: Kit, issuers: Issuers) -> None:
    status, answer = _post(kit, _decision(), issuers.google.mint(BOB, URL))
    assert status == 403 and f"user:{BOB} is not an approver of model gated" in answer["refused"]
    assert kit.run(RUN)["approval"]["refused"][0]["by"] == f"user:{BOB}"
    assert kit.run(RUN)["status"] == AWAITING_APPROVAL and kit.bus.published == []


def test_the_deployed_policy_decides_who_approves_not_the_request_or_the_manifest(kit: Kit, issuers: Issuers) -> None:
    """The run's request (and any manifest) may name Mallory: the deployed policy does not, so she is refused."""
    kit.ledger.note(
        RUN, {"approval.approvers": [f"user:{MALLORY}"], "manifest": {"approval": {"approvers": [MALLORY]}}}
    )
    status, answer = _post(kit, _decision(), issuers.google.mint(MALLORY, URL))
    assert status == 403 and "not an approver of model gated" in answer["refused"]


def test_a_decision_for_a_run_that_does_not_exist_is_refused_and_never_applied_later(
    kit: Kit, issuers: Issuers
) -> None:
    later = "gated-20300102t030000z"
    status, answer = _post(kit, _decision(later), issuers.google.mint(ALICE, URL))
    assert status == 404 and f"no run {later}" in answer["refused"]
    assert kit.ledger.get(later) is None, "nothing is created for an unknown run"
    _seed_waiting(kit, later, "gated")  # the run appears: nothing was kept to pre-approve it
    assert kit.run(later)["status"] == AWAITING_APPROVAL and kit.bus.published == []


def test_a_run_that_ended_takes_no_decision_and_records_nothing(kit: Kit, issuers: Issuers) -> None:
    assert _post(kit, _decision(verdict="reject"), issuers.google.mint(ALICE, URL))[0] == 200
    before = kit.run(RUN)
    status, answer = _post(kit, _decision(), issuers.google.mint(ALICE, URL))
    assert status == 409 and "is not awaiting approval" in answer["refused"]
    assert kit.run(RUN) == before and kit.bus.types() == [events.RUN_REJECTED]


def test_a_reject_landing_between_an_approves_read_and_its_write_wins(kit: Kit, issuers: Issuers) -> None:
    """The approve is decided on a stale read (the run still waiting); its write finds the run rejected meanwhile,
    so the decision is taken again on the record as written: refused, no delivery.cleared."""
    stale = kit.ledger.run(RUN)
    reject = approval.Decided(decision="reject", by=f"user:{ALICE}", reason="drifted", id="r1")
    rule = approval.policy(kit.ctx).rule("gated")
    kit.ctx.conclude(RUN, approval.decision(stale, reject, rule, now()))  # type: ignore[arg-type]
    reads = iter([stale])
    real = kit.ledger.run
    kit.ledger.run = lambda run_id: next(reads, None) or real(run_id)  # type: ignore[method-assign]
    status, answer = _post(kit, _decision(), issuers.google.mint(ALICE, URL))
    assert status == 409 and "already decided (reject" in answer["refused"]
    assert kit.run(RUN)["status"] == "rejected" and kit.bus.types() == [events.RUN_REJECTED]


def test_a_malformed_decision_is_refused_naming_each_problem(kit: Kit, issuers: Issuers) -> None:
    status, answer = _post(kit, {"run_id": "x", "decision": "maybe", "reason": ""}, issuers.google.mint(ALICE, URL))
    assert status == 400
    assert "is not a run id" in answer["refused"] and "is not one of approve, reject" in answer["refused"]
    assert "reason must be" in answer["refused"]


def test_clear_delivery_follows_the_deployed_policy_not_the_buckets_manifest(issuers: Issuers) -> None:
    """A manifest pushed without its approval block still waits for approval; one naming itself is not asked."""
    # the evaluation's gate as evaluate emits it: one entry per metric (nested, frozen in the event's data)
    gate = {"metric": "accuracy", "passed": True, "gates": [{"metric": "accuracy", "value": 0.97, "reasons": []}]}
    passed = {"model": "gated", "model_artifact": ARTIFACT, "metrics": {"accuracy": 0.97}, "gate": gate}
    for policy, expected in ((POLICY, events.APPROVAL_REQUESTED), ({}, events.DELIVERY_CLEARED)):
        kit = Kit("clear_delivery", approval_policy=json.dumps(policy))
        bucket_manifest = manifest(name="gated")
        bucket_manifest.pop("approval", None)
        if not policy:
            bucket_manifest["approval"] = {"required": True, "approvers": [f"user:{MALLORY}"]}
        kit.seed(RUN, manifest=bucket_manifest)
        kit.deliver(approval.clear_delivery, event(events.EVALUATION_PASSED, RUN, passed))
        assert kit.bus.types() == [expected]
        if expected == events.APPROVAL_REQUESTED:
            assert kit.run(RUN)["approval"]["approvers"] == [f"user:{ALICE}"]
            assert json.loads(json.dumps(kit.run(RUN)["approval"]["gate"])) == gate, "stored as plain JSON values"


def test_the_approval_policy_setting_is_read_from_json_or_a_file(tmp_path: Path) -> None:
    from datetime import timedelta

    from cd4ml.approval_policy import Policy, difference
    from cd4ml.errors import InvalidSettings
    from cd4ml.manifest import Approval

    file = tmp_path / "policy.json"
    file.write_text(json.dumps(POLICY))
    for value in (json.dumps(POLICY), f"file:{file}"):
        assert Policy.of(value).rule("gated") == Approval((f"user:{ALICE}",), timedelta(hours=72))
    assert Policy.of("").rule("gated") is None and Policy.of(f"file:{tmp_path}/absent").rules == {}
    with pytest.raises(InvalidSettings, match="CD4ML_APPROVAL_POLICY is not a policy"):
        Policy.of("{not json")
    assert Policy.of(Policy.of(json.dumps(POLICY)).to_json()) == Policy.of(json.dumps(POLICY))
    deployed = Policy.of(json.dumps(POLICY))
    assert difference("gated", deployed.rule("gated"), deployed) is None
    line = difference("gated", None, deployed)
    assert line is not None and "\n" not in line
    assert line.startswith(
        f"model gated: the manifest asks no approval but the deployed policy requires approval by user:{ALICE} within 3d"
    )


def test_model_check_says_in_one_line_when_the_manifest_differs_from_the_deployed_policy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cd4ml_cli import main as cli

    folder = str(REPO / "examples" / "digits")  # its manifest asks no approval
    monkeypatch.setenv("CD4ML_APPROVAL_POLICY", json.dumps({"digits": POLICY["gated"]}))
    assert cli.main(["model", "check", folder]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[1] == (
        f"model digits: the manifest asks no approval but the deployed policy requires approval by user:{ALICE} "
        "within 3d; runs follow the deployed policy (the platform team changes it with `terraform apply`)"
    )
    monkeypatch.setenv("CD4ML_APPROVAL_POLICY", "{}")
    assert cli.main(["model", "check", folder]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1, "an agreeing manifest gets no note"
