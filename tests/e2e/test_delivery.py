"""Delivery on the local stack: a real image in a real registry, and the Spinnaker canary webhook."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_emulator.spinnaker import tls as _gate_tls

from cd4ml import events
from tests.e2e.conftest import EXAMPLE, Pipeline


def _types(run: dict[str, Any]) -> list[str]:
    return [e["type"] for e in sorted(run["events"], key=lambda e: e["time"])]


def _gate(pipeline: Pipeline, path: str) -> Any:
    """A read from the stack's Gate, which requires the functions' client certificate (Gate's x509 auth)."""
    context = _gate_tls.client_context(pipeline.stack.root)
    with urllib.request.urlopen(pipeline.stack.endpoints["gate"] + path, timeout=5, context=context) as response:
        return json.loads(response.read())


def _key_file(pipeline: Pipeline, model: str) -> Path:
    """The file of ``model``'s own Spinnaker webhook key."""
    return Path(pipeline.env["CD4ML_GATE_KEY_SECRET"].removeprefix("file:").replace("{model}", model))


def _file_in_image(reference: str, path: str, workdir: Path, creds: str) -> bytes:
    """Pull the image by digest from the registry (``creds``: it has token auth) and read one file out of its layers."""
    layout = workdir / "image"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            f"docker://{reference}",
            f"oci:{layout}:pulled",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    found = None
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1]) as tar:
            for member in tar.getmembers():
                if member.name.lstrip("./") == path.lstrip("/") and member.isfile():
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    found = extracted.read()
    assert found is not None, f"{path} not in {reference}"
    return found


@pytest.fixture(scope="module")
def delivered(pipeline: Pipeline) -> dict[str, Any]:
    return pipeline.wait(pipeline.request("digits"))


def test_a_run_ends_when_its_canary_succeeded_and_its_model_is_promoted(
    pipeline: Pipeline, delivered: dict[str, Any]
) -> None:
    assert delivered["status"] == "succeeded"
    seen = _types(delivered)
    assert seen[0] == events.RUN_REQUESTED and seen[-1] == events.MODEL_PROMOTED
    for milestone in (
        events.EVALUATION_PASSED,
        events.IMAGE_BUILT,
        events.IMAGE_PUSHED,
        events.CANARY_TRIGGERED,
        events.CANARY_SUCCEEDED,
    ):
        assert milestone in seen
    assert (
        delivered["image"]["reference"]
        == delivered["image"]["reference"].split("@")[0] + "@" + delivered["image"]["digest"]
    )
    assert delivered["canary"]["verdict"] == "succeeded" and delivered["canary"]["active"] is False
    # the alias tag resolves to the run's image, through the Docker Registry HTTP API v2
    assert _alias_digest(pipeline, "digits", "champion") == delivered["image"]["digest"]
    assert delivered["promotion"]["digest"] == delivered["image"]["digest"]
    champion = pipeline.ledger.champion("digits")
    assert champion is not None and champion["run_id"] == delivered["run_id"]
    assert champion["digest"] == delivered["image"]["digest"]


def _alias_digest(pipeline: Pipeline, model: str, alias: str) -> str | None:
    """Where the alias points, read through the Docker Registry HTTP API v2 as the project's owner."""
    from cd4ml import identities, registry

    host = pipeline.stack.endpoints["registry"]
    client = registry.RegistryClient(token=lambda: pipeline.registry_creds().split(":", 1)[1])
    repository = identities.image_repository(pipeline.settings.registry, model)  # a repository per model
    return client.digest(registry.Repository.of(repository, f"http://{host}"), alias)


def _set_outcome(pipeline: Pipeline, run_id: str, status: str, stage: str = "") -> None:
    body = json.dumps({"status": status, "stage": stage}).encode()
    request = urllib.request.Request(
        pipeline.stack.endpoints["gate"] + f"/test-double/outcomes/{run_id}",
        data=body,
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=5, context=_gate_tls.client_context(pipeline.stack.root)).close()


@contextlib.contextmanager
def _canary_that_runs_on(pipeline: Pipeline, tmp_path: Path, deadline_minutes: float) -> Iterator[str]:
    """The id of a digits run whose canary execution never ends (its deadline ends the run), with the example's
    manifest given that deadline for the block and restored after it."""
    from cd4ml_models import folder as models

    variant = pipeline.variant(tmp_path, "digits", {"canary": {"deadline_minutes": deadline_minutes}})
    models.push(pipeline.storage, variant, pipeline.settings.artifact_bucket)
    try:
        run_id = pipeline.next_run_id("digits")
        _set_outcome(pipeline, run_id, "RUNNING")
        yield pipeline.request("digits", run_id=run_id)
    finally:
        models.push(pipeline.storage, EXAMPLE, pipeline.settings.artifact_bucket)


def test_a_canary_that_fails_ends_the_run_failed_and_leaves_the_champion(
    pipeline: Pipeline, delivered: dict[str, Any]
) -> None:
    run_id = pipeline.next_run_id("digits")
    _set_outcome(pipeline, run_id, "TERMINAL", "Canary analysis")
    run = pipeline.wait(pipeline.request("digits", run_id=run_id))
    assert run["status"] == "failed" and run["canary"]["verdict"] == "failed"
    assert run["canary"]["stage"] == "Canary analysis"
    assert "ended TERMINAL at stage 'Canary analysis'" in run["error"]["message"]
    assert _types(run)[-1] == events.CANARY_FAILED and events.MODEL_PROMOTED not in _types(run)
    assert _alias_digest(pipeline, "digits", "champion") == delivered["image"]["digest"]
    champion = pipeline.ledger.champion("digits")
    assert champion is not None and champion["run_id"] == delivered["run_id"]


@pytest.mark.flow
def test_a_canary_that_never_ends_fails_at_its_deadline(
    pipeline: Pipeline, delivered: dict[str, Any], tmp_path: Path
) -> None:
    with _canary_that_runs_on(pipeline, tmp_path, deadline_minutes=0.25) as run_id:
        run = pipeline.wait(run_id, timeout=240)
    assert run["status"] == "failed" and run["canary"]["status"] == "DEADLINE"
    assert "had not ended by its deadline" in run["error"]["message"]
    assert _alias_digest(pipeline, "digits", "champion") == delivered["image"]["digest"]


def test_the_image_in_the_registry_holds_the_trained_model(
    pipeline: Pipeline, delivered: dict[str, Any], tmp_path: Path
) -> None:
    model = _file_in_image(
        delivered["image"]["reference"], "/opt/model/model.joblib", tmp_path, pipeline.registry_creds()
    )
    assert hashlib.sha256(model).hexdigest() == delivered["model_artifact"]["sha256"]


def test_the_gate_recorded_the_digest_and_started_the_execution(pipeline: Pipeline, delivered: dict[str, Any]) -> None:
    canary = delivered["canary"]
    executions = _gate(pipeline, f"/applications/*/executions/search?triggerTypes=webhook&eventId={canary['event_id']}")
    assert [e["id"] for e in executions] == [canary["execution_id"]]
    [webhook] = [w for w in _gate(pipeline, "/webhooks/recorded") if w["eventId"] == canary["event_id"]]
    assert webhook["payload"]["digest"] == delivered["image"]["digest"]
    assert {"type": "docker/image", "reference": delivered["image"]["reference"]}.items() <= webhook["payload"][
        "artifacts"
    ][0].items()


def test_the_key_appears_in_no_event_and_no_run_record(pipeline: Pipeline, delivered: dict[str, Any]) -> None:
    key = _key_file(pipeline, "digits").read_text().strip()
    assert key not in json.dumps(delivered)
    logs = "".join(p.read_text(errors="replace") for p in (pipeline.stack.root / "logs").glob("fn-*.log"))
    assert key not in logs


def test_a_failing_build_ends_the_run_failed_with_the_reason(pipeline: Pipeline, tmp_path: Path) -> None:
    def broken(manifest: dict[str, Any]) -> None:
        manifest["serving"]["dockerfile"] = "serving/Broken.Dockerfile"

    folder_setup = tmp_path / "digits-broken"
    model = pipeline.push_variant(
        tmp_path,
        "digits-broken",
        broken,
        extra={"serving/Broken.Dockerfile": "FROM python:3.11-slim\nCOPY no-such-file /nowhere\n"},
    )
    assert folder_setup.exists()
    run = pipeline.wait(pipeline.request(model))
    assert run["status"] == "failed"
    assert _types(run)[-1] == events.IMAGE_FAILED
    assert run["image"]["status"] == "FAILURE"
    assert "no-such-file" in run["error"]["message"] or "COPY" in run["error"]["message"]
    assert "log:" in run["error"]["message"]


@pytest.mark.flow
def test_a_wrong_key_is_refused_by_the_gate_and_reported(pipeline: Pipeline) -> None:
    key_file = _key_file(pipeline, "digits")
    key = key_file.read_text()
    key_file.write_text("not-the-key")
    try:
        run = pipeline.wait(pipeline.request("digits"))
    finally:
        key_file.write_text(key)
    assert run["status"] == "failed"
    assert _types(run)[-1] == events.CANARY_FAILED
    assert "no pipeline of application 'digits' started" in run["error"]["message"]
    assert (
        _gate(pipeline, f"/applications/*/executions/search?triggerTypes=webhook&eventId={run['canary']['event_id']}")
        == []
    )


@pytest.mark.flow
def test_a_gate_outage_shorter_than_the_retry_budget_delays_the_canary_but_loses_nothing(pipeline: Pipeline) -> None:
    """Gate unreachable is retried by redelivery (not the run's fault); once it is back, exactly one execution."""
    import time

    from local_emulator import stack as local

    local.stop(pipeline.stack, "gate")
    try:
        run_id = pipeline.request("digits")
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:  # until trigger_canary has met the outage
            run = pipeline.ledger.get(run_id) or {}
            if (run.get("image") or {}).get("status") == "SUCCESS" and (run.get("image") or {}).get("reference"):
                break
            time.sleep(0.5)
        time.sleep(8)
        assert (pipeline.ledger.get(run_id) or {}).get("status") == "running"
    finally:
        local.start_gate(pipeline.stack)
    run = pipeline.wait(run_id, timeout=240)
    assert run["status"] == "succeeded", run.get("error")
    assert _types(run).count(events.CANARY_TRIGGERED) == 1
    executions = [
        e
        for e in _gate(pipeline, "/applications/*/executions/search?triggerTypes=webhook")
        if (e.get("trigger") or {}).get("payload", {}).get("run_id") == run_id
    ]
    assert len(executions) == 1


@pytest.mark.flow
def test_a_forged_canary_verdict_and_a_planted_push_move_nothing(
    pipeline: Pipeline, delivered: dict[str, Any], tmp_path: Path
) -> None:
    # Whoever may publish on the topics (or push to the registry) rings the doorbell; the run record answers.
    from google.cloud import pubsub_v1

    from cd4ml.events import Event

    assert delivered["status"] == "succeeded"  # a champion to keep (other tests may have promoted a later one)
    alias, champion = _alias_digest(pipeline, "digits", "champion"), pipeline.ledger.champion("digits") or {}
    with _canary_that_runs_on(pipeline, tmp_path, deadline_minutes=0.5) as run_id:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            run = pipeline.ledger.get(run_id) or {}
            if run and ((run.get("canary") or {}).get("active") or run.get("status") != "running"):
                break
            time.sleep(0.3)
        assert run.get("status") == "running" and run["canary"]["active"], run
        reference = run["image"]["reference"]
        repository, built = reference.split("@")
        forged = Event.new(
            events.CANARY_SUCCEEDED,
            run_id,
            {"model": "digits", "execution_id": run["canary"]["execution_id"]},
            source="//attacker",
        )
        pipeline.bus.publish(forged)
        planted = "sha256:" + hashlib.sha256(b"planted").hexdigest()
        notice = {"action": "INSERT", "digest": f"{repository}@{planted}", "tag": f"{repository}:{run_id}"}
        publisher = pubsub_v1.PublisherClient()
        publisher.publish(publisher.topic_path(pipeline.settings.project, "gcr"), json.dumps(notice).encode()).result(
            timeout=30
        )
        refused = pipeline.dead_lettered("promote", run_id)
        assert any("the run's canary verdict is" in r and "not succeeded" in r for r in refused), refused
        planted_refused = pipeline.dead_lettered("on_push", run_id)
        assert any(f"its digest {planted[:19]}" in r and built[:19] in r for r in planted_refused), planted_refused
        run = pipeline.wait(run_id, timeout=180)  # its canary's deadline ends it
    assert run["status"] == "failed" and events.MODEL_PROMOTED not in _types(run)
    assert run["image"]["reference"] == reference  # the planted digest never became the run's image
    assert _alias_digest(pipeline, "digits", "champion") == alias
    after = pipeline.ledger.champion("digits") or {}
    assert (after.get("run_id"), after.get("digest")) == (champion.get("run_id"), champion.get("digest"))
