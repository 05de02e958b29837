"""Who may talk to Gate and start what: x509 authentication on the Gate stand-in, and one key per model.

Gate authenticates every call but ``POST /webhooks/**`` (gate-core AuthConfig) when auth is on; each model's
pipeline trigger (local_emulator/stack/parts.gate_config, as README's Spinnaker setup has a user paste) holds that
model's key and name as payload constraints and its repository as the expected artifact, matched as Echo does.
In-process servers only: no process is spawned."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_emulator.spinnaker import GateState, make_server, parse_config, tls_context
from local_emulator.spinnaker import tls as _gate_tls
from local_emulator.stack import gate_config

from cd4ml import gate_credentials, identities, spinnaker
from cd4ml.errors import InvalidManifest, RetryableError
from cd4ml.manifest import Manifest, parse

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "manifest.yaml"
REGISTRY = "127.0.0.1:5000/cd4ml-{model}"  # CD4ML_REGISTRY: a repository per model
KEYS = {"digits": "key-of-digits", "iris": "key-of-iris"}


def _manifest(name: str, **canary: Any) -> Manifest:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["name"] = name
    document["canary"] = {"application": name, "pipeline": f"{name}-canary", **canary}
    return parse(document)


def _payload(model: str, run_id: str, image_of: str | None = None) -> dict[str, Any]:
    """What trigger_canary posts for a run of ``model`` (its image from ``image_of``'s repository)."""
    reference = f"{identities.image_repository(REGISTRY, image_of or model)}@sha256:" + "b" * 64
    return spinnaker.webhook_payload(model=model, run_id=run_id, reference=reference, metrics={}, model_artifact={})


@pytest.fixture
def state(tmp_path: Path) -> GateState:
    config = gate_config([_manifest("digits"), _manifest("iris")], KEYS, REGISTRY)
    return GateState(parse_config(config), tmp_path, execution_ms=60_000)


def _started(state: GateState, source: str, payload: dict[str, Any], key: str) -> list[str]:
    """The applications of the executions a webhook started."""
    webhook = state.receive(source, {**payload, spinnaker.KEY_FIELD: key})
    return [str(state.execution(e)["application"]) for e in webhook.execution_ids]  # type: ignore[index]


# --- one key per model --------------------------------------------------------------------------------------


def test_a_models_own_key_and_source_start_its_own_pipeline(state: GateState) -> None:
    assert _started(state, "cd4ml-digits", _payload("digits", "digits-1"), KEYS["digits"]) == ["digits"]
    assert _started(state, "cd4ml-iris", _payload("iris", "iris-1"), KEYS["iris"]) == ["iris"]


def test_model_as_key_cannot_start_model_bs_pipeline(state: GateState) -> None:
    # A's key, whatever source and model name the payload claims: B's trigger asks for B's key.
    assert _started(state, "cd4ml-iris", _payload("iris", "iris-2"), KEYS["digits"]) == []
    assert _started(state, "cd4ml-iris", _payload("iris", "iris-2", image_of="digits"), KEYS["digits"]) == []
    assert _started(state, "cd4ml-digits", _payload("iris", "iris-2"), KEYS["digits"]) == []


def test_model_as_key_cannot_start_its_own_pipeline_with_bs_image_or_name(state: GateState) -> None:
    assert _started(state, "cd4ml-digits", _payload("digits", "digits-3", image_of="iris"), KEYS["digits"]) == []
    assert _started(state, "cd4ml-digits", _payload("digits-v2", "digits-3"), KEYS["digits"]) == []  # anchored


def test_a_key_that_only_contains_the_right_one_starts_nothing(state: GateState) -> None:
    # Echo's constraint is a substring search: the key constraint is anchored, so padding does not help.
    assert _started(state, "cd4ml-digits", _payload("digits", "digits-4"), "x" + KEYS["digits"] + "x") == []


def test_a_manifest_cannot_name_another_models_webhook_source() -> None:
    assert _manifest("digits").webhook_source == "cd4ml-digits"
    assert _manifest("digits", webhook_source="cd4ml-digits").webhook_source == "cd4ml-digits"
    with pytest.raises(InvalidManifest, match=r"canary.webhook_source: 'cd4ml-iris' is not 'cd4ml-digits'"):
        _manifest("digits", webhook_source="cd4ml-iris")


# --- Gate's x509 authentication -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> _gate_tls.GateTls:
    return _gate_tls.make(tmp_path_factory.mktemp("tls"), tmp_path_factory.mktemp("secrets") / "gate-client.pem")


@pytest.fixture
def gate_url(state: GateState, tls: _gate_tls.GateTls) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, state, tls_context(tls.server, tls.ca), require_auth=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _call(url: str, tls: _gate_tls.GateTls, client: Path | None, body: Any = None) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(tls.ca))
    if client is not None:
        context.load_cert_chain(client)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_reads_need_a_client_certificate_webhooks_and_health_do_not(gate_url: str, tls: _gate_tls.GateTls) -> None:
    payload = {**_payload("digits", "digits-5"), spinnaker.KEY_FIELD: KEYS["digits"]}
    code, answer = _call(f"{gate_url}/webhooks/webhook/cd4ml-digits", tls, None, payload)
    assert code == 200 and answer["eventProcessed"] is True
    assert _call(f"{gate_url}/health", tls, None)[0] == 200
    search = f"{gate_url}/applications/digits/executions/search?triggerTypes=webhook&eventId={answer['eventId']}"
    for path in (search, f"{gate_url}/pipelines/anything", f"{gate_url}/webhooks/recorded"):
        code, refused = _call(path, tls, None)
        assert (code, refused["message"]) == (403, "Access Denied"), path
    code, found = _call(search, tls, tls.client)
    assert code == 200 and len(found) == 1 and found[0]["application"] == "digits"


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(
    gate_url: str, tls: _gate_tls.GateTls, tmp_path: Path
) -> None:
    stranger = _gate_tls.make(tmp_path / "other", tmp_path / "stranger.pem")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _call(f"{gate_url}/pipelines/anything", tls, stranger.client)


def test_the_client_with_its_certificate_is_confirmed_and_reads_the_execution(
    gate_url: str, tls: _gate_tls.GateTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.trust))  # as the local stack sets it for the Gate stages
    client = spinnaker.GateClient(gate_url, credentials=gate_credentials.load(f"x509:file:{tls.client}"))
    result = client.trigger("cd4ml-digits", "digits", _payload("digits", "digits-6"), key=KEYS["digits"])
    assert result.execution_id and not result.reason
    assert client.execution(result.execution_id)["status"] == "RUNNING"
    assert client.find_execution("digits", "digits-6") == result


def test_the_client_without_credentials_cannot_confirm_nor_watch(
    gate_url: str, tls: _gate_tls.GateTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.trust))
    client = spinnaker.GateClient(gate_url)
    # Unknown, not "nothing started": retried (the next delivery asks Gate first), never a second webhook.
    with pytest.raises(RetryableError, match=r"could not confirm the execution of event .*HTTP 403.*CD4ML_GATE_AUTH"):
        client.trigger("cd4ml-digits", "digits", _payload("digits", "digits-7"), key=KEYS["digits"])
    with pytest.raises(RetryableError, match="HTTP 403"):
        client.find_execution("digits", "digits-7")
    with pytest.raises(RetryableError, match="HTTP 403"):
        client.execution("anything")
