"""trigger_canary calls Spinnaker for the run's own model only: that model's key, a source derived from its name.

The stage runs on the in-memory ledger (tests/stagekit.py); Gate is a fake ``requests`` session that records what
trigger_canary sent. Each test plays model A's team trying to start model B's pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from cd4ml import events
from cd4ml.events import Event
from cd4ml.stages import delivery
from tests.stagekit import Kit, manifest

RUN = "digits-20300101t030000z"
REGISTRY = "registry.test/cd4ml"
BUILT = "sha256:" + "b" * 64
KEYS = {"digits": "key-of-digits", "iris": "key-of-iris"}


class FakeGate:
    """Answers the webhook with an event id and the search with one execution; records every request."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.sent.append((method, url, kwargs))
        response = requests.Response()
        response.status_code = 200
        response.headers["Content-Type"] = "application/json"
        body: Any = {"eventProcessed": True, "eventId": "e-1"} if method == "POST" else [{"id": "X1", "name": "c"}]
        response._content = json.dumps(body).encode()
        return response


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> FakeGate:
    fake = FakeGate()

    def request(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
        return fake.request(method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    return fake


def _kit(tmp_path: Path, template: str = "spinnaker-key-{model}") -> Kit:
    for model, key in KEYS.items():
        (tmp_path / f"spinnaker-key-{model}").write_text(key)
    return Kit(
        "trigger_canary",
        registry=REGISTRY,
        gate_url="https://gate.test",
        gate_auth="none",
        gate_key_secret=f"file:{tmp_path}/{template}",
    )


def _seed(kit: Kit, document: dict[str, Any]) -> None:
    kit.seed(
        RUN,
        manifest=document,
        model_artifact={"uri": f"gs://artifacts/runs/{RUN}/model/model.joblib", "sha256": "a" * 64},
        evaluation={"passed": True, "metrics": {"accuracy": 0.97}, "gate": {"champion_run": None}},
        image={"build_id": "build-1", "status": "SUCCESS", "digest": BUILT, "reference": f"{REGISTRY}/digits@{BUILT}"},
    )


def _pushed() -> Event:
    data = {"model": "digits", "reference": f"{REGISTRY}/digits@{BUILT}", "tag": f"{REGISTRY}/digits:{RUN}"}
    return Event.new(events.IMAGE_PUSHED, RUN, data, source="//t")


def test_the_runs_model_key_and_derived_source_are_sent(tmp_path: Path, gate: FakeGate) -> None:
    kit = _kit(tmp_path)
    _seed(kit, manifest())
    kit.deliver(delivery.trigger_canary, _pushed())
    assert kit.bus.types() == [events.CANARY_TRIGGERED]
    method, url, kwargs = gate.sent[0]
    assert (method, url) == ("POST", "https://gate.test/webhooks/webhook/cd4ml-digits")
    assert kwargs["json"]["cd4ml_key"] == KEYS["digits"] and kwargs["json"]["model"] == "digits"


def test_a_manifest_naming_another_model_cannot_use_its_key_or_source(tmp_path: Path, gate: FakeGate) -> None:
    # Model digits' run whose manifest (written by digits' team in the bucket) claims to be iris.
    kit = _kit(tmp_path)
    _seed(kit, manifest(name="iris"))
    kit.deliver(delivery.trigger_canary, _pushed())
    [dead] = kit.bus.dead_letters
    assert "is of model digits but its manifest names iris" in dead.error
    assert gate.sent == [] and kit.ledger.claim(RUN, "canary-webhook") is None


def test_a_manifest_naming_another_models_webhook_source_is_refused(tmp_path: Path, gate: FakeGate) -> None:
    kit = _kit(tmp_path)
    document = manifest()
    document["canary"] = {**document["canary"], "webhook_source": "cd4ml-iris"}
    _seed(kit, document)
    kit.deliver(delivery.trigger_canary, _pushed())
    [dead] = kit.bus.dead_letters
    assert "canary.webhook_source: 'cd4ml-iris' is not 'cd4ml-digits'" in dead.error
    assert gate.sent == []


def test_one_key_for_every_model_is_refused(tmp_path: Path, gate: FakeGate) -> None:
    (tmp_path / "shared-key").write_text("one-key-for-all")
    kit = _kit(tmp_path, template="shared-key")
    _seed(kit, manifest())
    kit.deliver(delivery.trigger_canary, _pushed())
    [dead] = kit.bus.dead_letters
    assert "CD4ML_GATE_KEY_SECRET must contain {model}" in dead.error
    assert gate.sent == []
