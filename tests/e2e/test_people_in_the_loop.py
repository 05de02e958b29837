"""People in the loop, on the local stack. The approval gate: a gated run waits; an approver's `cd4ml approve`
delivers it, a non-approver is refused and recorded, `cd4ml reject` and the expiry end it rejected. Forged decisions
(another model's approver, a `by` naming the approver with someone else's ID token, a publish to a decision topic)
are refused, and a manifest pushed without its approval block still waits (the deployed policy decides).
Notifications: a failed run and an approval request each reach the receiver exactly once, even delivered twice."""

from __future__ import annotations

import getpass
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from cd4ml_cli import main as cli

from cd4ml import events
from cd4ml.events import Event, parse_time
from cd4ml.run import AWAITING_APPROVAL
from cd4ml.stages.notify import notification_key
from tests.e2e.conftest import EXAMPLE, Pipeline

ME = f"user:{getpass.getuser()}@localhost"
BOB = "user:bob@localhost"  # the approver of another model


def _gated(expires_after: str, approvers: list[str] | None = None) -> Any:
    def change(manifest: dict[str, Any]) -> None:
        manifest["approval"] = {"required": True, "approvers": approvers or [ME], "expires_after": expires_after}
        manifest["notify"] = [{"channel": "gate-team"}]  # Slack-compatible, every kind of notice
        manifest["canary"]["pipeline"] = f"{manifest['name']}-canary"  # its own pipeline in the Gate stand-in

    return change


def _until(pipeline: Pipeline, run_id: str, status: str, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = pipeline.ledger.get(run_id)
        if run and run["status"] == status:
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} never reached {status}: {pipeline.ledger.get(run_id)}")


def _cli(monkeypatch: pytest.MonkeyPatch, pipeline: Pipeline, user: str, *argv: str) -> int:
    """The `cd4ml` command as the OS user ``user`` (getpass reads LOGNAME and USER first)."""
    with monkeypatch.context() as env:
        for name, value in pipeline.env.items():
            env.setenv(name, value)
        env.setenv("LOGNAME", user)
        env.setenv("USER", user)
        return cli.main(list(argv))


@pytest.fixture(scope="module")
def runs(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three gated runs at once: one to approve, one to reject, one left to expire."""
    tmp = tmp_path_factory.mktemp("approval")
    gated = pipeline.push_variant(Path(tmp), "gated", _gated("30m"))
    pipeline.push_variant(Path(tmp), "gated-by-bob", _gated("30m", approvers=[BOB]))  # deployed, never run
    brief = pipeline.push_variant(Path(tmp), "gated-brief", _gated("2s"))
    doomed = pipeline.push_variant(Path(tmp), "doomed", _doomed)
    approve = pipeline.request(gated, pipeline.next_run_id(gated))
    reject = pipeline.request(gated, pipeline.next_run_id(gated))
    expire = pipeline.request(brief)
    fail = pipeline.request(doomed)
    return {"approve": approve, "reject": reject, "expire": expire, "fail": fail}


def _doomed(manifest: dict[str, Any]) -> None:
    """A model whose gate nothing passes, routed to a JSON webhook for failures only."""
    manifest["evaluation"]["threshold"] = 0.9999
    manifest["notify"] = [{"channel": "ml-team", "format": "json", "on": ["failed"]}]


def test_a_gated_run_waits_showing_what_the_approver_needs(pipeline: Pipeline, runs: dict[str, str]) -> None:
    run = _until(pipeline, runs["approve"], AWAITING_APPROVAL)
    approval = run["approval"]
    assert approval["approvers"] == [ME] and approval["expires_at"] > approval["requested_at"]
    assert approval["metrics"]["accuracy"] > 0.9 and approval["gate"]["metric"] == "accuracy"
    assert events.APPROVAL_REQUESTED in [e["type"] for e in run["events"]]
    assert not run.get("image"), "nothing is built before the decision"


def test_a_non_approver_is_refused_and_recorded_and_the_run_keeps_waiting(
    pipeline: Pipeline, runs: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _until(pipeline, runs["approve"], AWAITING_APPROVAL)
    assert _cli(monkeypatch, pipeline, "mallory", "approve", runs["approve"], "--reason", "ship it") == 1
    assert "refused: user:mallory@localhost is not an approver of model gated" in capsys.readouterr().out
    run = pipeline.ledger.get(runs["approve"]) or {}
    assert run["status"] == AWAITING_APPROVAL
    (refused,) = [r for r in run["approval"]["refused"] if r["by"] == "user:mallory@localhost"]
    assert refused["reason"] == "ship it"


def _post(pipeline: Pipeline, email: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A decision sent straight to the endpoint with ``email``'s ID token (from the stack's issuer stand-in)."""
    from cd4ml_cli import approvals

    url = pipeline.env["CD4ML_DECISION_URL"]
    token = approvals.id_token(url, {approvals.LOCAL_TOKEN_ISSUER: pipeline.env[approvals.LOCAL_TOKEN_ISSUER]})
    if email != approvals.local_email():
        request = urllib.request.Request(
            pipeline.env[approvals.LOCAL_TOKEN_ISSUER] + "/token",
            data=json.dumps({"email": email, "audience": url}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            token = json.loads(response.read())["id_token"]
    return approvals.post(url, token, body)


def test_another_models_approver_is_refused_and_recorded(
    pipeline: Pipeline, runs: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _until(pipeline, runs["approve"], AWAITING_APPROVAL)
    assert _cli(monkeypatch, pipeline, "bob", "approve", runs["approve"], "--reason", "I approve gated-by-bob") == 1
    assert f"refused: {BOB} is not an approver of model gated" in capsys.readouterr().out
    run = pipeline.ledger.get(runs["approve"]) or {}
    assert run["status"] == AWAITING_APPROVAL and any(r["by"] == BOB for r in run["approval"]["refused"])


def test_a_by_naming_the_approver_with_someone_elses_token_is_refused_and_recorded(
    pipeline: Pipeline, runs: dict[str, str]
) -> None:
    _until(pipeline, runs["approve"], AWAITING_APPROVAL)
    decision = {"run_id": runs["approve"], "decision": "approve", "reason": "trust me", "by": ME}
    status, answer = _post(pipeline, "eve@localhost", decision)
    assert status == 403 and answer["refused"] == f"the decision names {ME} but its ID token is user:eve@localhost's"
    run = pipeline.ledger.get(runs["approve"]) or {}
    assert run["status"] == AWAITING_APPROVAL
    (refused,) = [r for r in run["approval"]["refused"] if r["by"] == "user:eve@localhost"]
    assert refused["why"] == answer["refused"]


def test_a_decision_without_a_token_or_published_to_a_topic_reaches_nothing(
    pipeline: Pipeline, runs: dict[str, str]
) -> None:
    from cd4ml_cli import approvals
    from google.api_core.exceptions import NotFound
    from google.cloud import pubsub_v1

    _until(pipeline, runs["approve"], AWAITING_APPROVAL)
    decision = {"run_id": runs["approve"], "decision": "approve", "reason": "no token", "by": ME}
    status, answer = approvals.post(pipeline.env["CD4ML_DECISION_URL"], "not-a-token", decision)
    assert status == 401 and "the ID token is not valid here" in answer["refused"]
    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(pipeline.settings.project, "cd4ml-approval-decided-v1")
    with pytest.raises(NotFound):
        publisher.publish(topic, json.dumps(decision).encode(), **{"ce-subject": runs["approve"]}).result(timeout=30)
    assert (pipeline.ledger.get(runs["approve"]) or {})["status"] == AWAITING_APPROVAL


def test_an_approvers_approve_delivers_the_run(
    pipeline: Pipeline, runs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _until(pipeline, runs["approve"], AWAITING_APPROVAL)
    assert _cli(monkeypatch, pipeline, getpass.getuser(), "approve", runs["approve"], "--reason", "metrics fine") == 0
    run = pipeline.wait(runs["approve"], timeout=420.0)  # a build and a canary: minutes on a loaded 2-core machine
    assert run["status"] == "succeeded", run.get("error")
    assert run["approval"]["decision"] == "approve" and run["approval"]["by"] == ME
    assert run["approval"]["reason"] == "metrics fine"
    types = [e["type"] for e in sorted(run["events"], key=lambda e: e["time"])]
    assert types.index(events.DELIVERY_CLEARED) < types.index(events.IMAGE_PUSHED)


def test_an_approvers_reject_ends_the_run_rejected(
    pipeline: Pipeline, runs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _until(pipeline, runs["reject"], AWAITING_APPROVAL)
    assert _cli(monkeypatch, pipeline, getpass.getuser(), "reject", runs["reject"], "--reason", "drifted") == 0
    run = pipeline.wait(runs["reject"])
    assert run["status"] == "rejected" and run["error"]["message"] == f"rejected by {ME}: drifted"
    assert not run.get("image")


def test_a_manifest_pushed_without_its_approval_block_still_waits_for_approval(
    pipeline: Pipeline,
    runs: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """The model team drops its gate with `cd4ml model push`: the bucket's manifest changes, the deployed policy
    does not; the push says so, and the next run still waits for the approver."""
    folder = tmp_path / "gated"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest.pop("approval", None)
    manifest["name"] = "gated"
    manifest["training"]["python_package"]["package_uris"] = ["packages/gated/trainer-0.1.0.tar.gz"]
    manifest["canary"]["pipeline"] = "gated-canary"
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    assert _cli(monkeypatch, pipeline, getpass.getuser(), "model", "push", str(folder)) == 0
    said = capsys.readouterr().out
    assert f"model gated: the manifest asks no approval but the deployed policy requires approval by {ME}" in said
    run_id = pipeline.request("gated", pipeline.next_run_id("gated"))
    run = _until(pipeline, run_id, AWAITING_APPROVAL)
    assert "approval" not in run["manifest"], "the run read the dropped manifest, and waits all the same"
    assert run["approval"]["approvers"] == [ME] and not run.get("image")
    assert _cli(monkeypatch, pipeline, getpass.getuser(), "reject", run_id, "--reason", "gate dropped") == 0


def test_no_decision_before_the_expiry_ends_the_run_rejected(pipeline: Pipeline, runs: dict[str, str]) -> None:
    run = pipeline.wait(runs["expire"])
    assert run["status"] == "rejected" and run["approval"]["decision"] == "expired"
    assert "no approver decided before the request expired" in run["error"]["message"]


# ---- notifications ----------------------------------------------------------------------------------------


def _received(pipeline: Pipeline, channel: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(pipeline.stack.endpoints["notify"] + "/received", timeout=5) as response:
        return [r["body"] for r in json.loads(response.read()) if r["channel"] == channel]


def _deliveries(pipeline: Pipeline, run_id: str, event_id: str, channel: str, at_least: int) -> dict[str, Any]:
    """The run's record of one notice once notify handled its event ``at_least`` times."""
    key = notification_key(event_id, channel)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = ((pipeline.ledger.get(run_id) or {}).get("notifications") or {}).get(key) or {}
        if seen.get("deliveries", 0) >= at_least:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"notify handled {event_id} fewer than {at_least} times: {pipeline.ledger.get(run_id)}")


def _again(pipeline: Pipeline, run: dict[str, Any], type_: str, data: dict[str, Any]) -> str:
    """Publish the run's recorded event of ``type_`` once more, same id (what an at-least-once delivery does)."""
    seen = next(e for e in run["events"] if e["type"] == type_)
    event = Event(type_, run["run_id"], data, seen["id"], seen["source"], parse_time(seen["time"]))
    pipeline.bus.publish(event)
    return str(seen["id"])


def test_a_failed_run_is_notified_once_with_what_happened_even_delivered_twice(
    pipeline: Pipeline, runs: dict[str, str]
) -> None:
    run = pipeline.wait(runs["fail"])
    assert run["status"] == "failed"
    evaluation = run["evaluation"]
    data = {
        "model": "doomed",
        "metrics": evaluation["metrics"],
        "gate": evaluation["gate"],
        "reasons": evaluation["reasons"],
    }
    event_id = _again(pipeline, run, events.EVALUATION_FAILED, data)
    seen = _deliveries(pipeline, runs["fail"], event_id, "ml-team", at_least=2)
    assert seen["kind"] == "failed"
    (posted,) = [b for b in _received(pipeline, "ml-team") if b.get("run_id") == runs["fail"]]
    assert posted["model"] == "doomed" and posted["kind"] == "failed" and posted["event_id"] == event_id
    assert posted["what"] == "run failed (evaluation.failed)" and "below the threshold" in posted["reason"]
    assert posted["command"] == f"cd4ml status {runs['fail']}"


def test_an_approval_request_is_notified_once_with_how_to_decide_even_delivered_twice(
    pipeline: Pipeline, runs: dict[str, str]
) -> None:
    run = pipeline.ledger.get(runs["reject"]) or {}
    approval = run["approval"]
    data = {
        "model": "gated",
        "model_artifact": run["model_artifact"],
        "metrics": approval["metrics"],
        "gate": approval["gate"],
        "approvers": approval["approvers"],
        "expires_at": approval["expires_at"],
    }
    event_id = _again(pipeline, run, events.APPROVAL_REQUESTED, data)
    _deliveries(pipeline, runs["reject"], event_id, "gate-team", at_least=2)
    texts = [b["text"] for b in _received(pipeline, "gate-team") if runs["reject"] in b["text"]]
    (asked,) = [t for t in texts if "waiting for approval" in t]
    assert "*gated*" in asked and ME in asked and f"cd4ml approve {runs['reject']} --reason" in asked
    assert "accuracy" in asked
