"""The Gate client: credentials on every call, answers that are not Gate's JSON, and a worst case bounded in time.

No process and no socket: a fake session answers, and a fake clock measures the time the client would spend."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from cd4ml import catalog, gate_credentials, spinnaker
from cd4ml.errors import PermanentError, RetryableError
from cd4ml.gate_credentials import GateCredentials

GATE = "https://gate.example.com"


class Clock:
    """Simulated time: a call that hangs moves it by its timeout, a pause by its length."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def _response(status: int, body: bytes, content_type: str, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.headers.update({"Content-Type": content_type, **headers})
    return response


class Session:
    """Answers each request with ``answer(method, url, kwargs)``; records what was sent."""

    def __init__(self, answer: Callable[[str, str, dict[str, Any]], requests.Response]) -> None:
        self.answer = answer
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        self.sent.append((method, url, kwargs))
        return self.answer(method, url, kwargs)


def _client(session: Session, clock: Clock | None = None, **kwargs: Any) -> spinnaker.GateClient:
    clock = clock or Clock()
    return spinnaker.GateClient(GATE, session, clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>...</body></html>"


def test_an_html_page_is_a_clear_retryable_error_naming_the_url_and_content_type() -> None:
    session = Session(lambda m, u, k: _response(200, LOGIN_PAGE, "text/html;charset=UTF-8"))
    with pytest.raises(RetryableError) as raised:
        _client(session).execution("01JEXEC")
    message = str(raised.value)
    assert f"GET {GATE}/pipelines/01JEXEC" in message and "text/html;charset=UTF-8" in message
    assert "HTML page" in message and "CD4ML_GATE_AUTH" in message
    assert len(session.sent) == 1  # a login page does not go away by asking again within the call


def test_an_html_page_while_confirming_or_recovering_is_retryable_too() -> None:
    def answer(method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        if method == "POST":
            return _response(200, b'{"eventProcessed": true, "eventId": "e-1"}', "application/json")
        return _response(200, LOGIN_PAGE, "text/html")

    client = _client(Session(answer))
    with pytest.raises(RetryableError, match=r"could not confirm the execution of event e-1: .*text/html"):
        client.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k")
    with pytest.raises(RetryableError, match=r"executions/search.*text/html"):
        client.find_execution("digits", "digits-20260101t000000z")


def test_a_login_redirect_is_not_followed_and_names_where_it_leads() -> None:
    login = "https://accounts.google.com/o/oauth2/v2/auth?client_id=x"
    session = Session(lambda m, u, k: _response(302, b"", "text/html", Location=login))
    with pytest.raises(RetryableError, match=re.escape("HTTP 302 to https://accounts.google.com/o/oauth2/v2/auth")):
        _client(session).execution("01JEXEC")
    assert session.sent[0][2]["allow_redirects"] is False


def test_a_non_json_body_without_content_type_is_named_too() -> None:
    session = Session(lambda m, u, k: _response(200, b"OK", ""))
    with pytest.raises(RetryableError, match="no content type: not JSON"):
        _client(session).execution("01JEXEC")


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        (GateCredentials("x509", cert_file="/run/gate-client.pem"), {"cert": "/run/gate-client.pem"}),
        (GateCredentials("iap", headers={"Authorization": "Bearer eyJ.tok"}), {"headers": {"Authorization": "Bearer eyJ.tok"}}),
    ],
)  # fmt: skip
def test_every_call_carries_the_credentials(credentials: GateCredentials, expected: dict[str, Any]) -> None:
    def answer(method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        if method == "POST":
            return _response(200, b'{"eventProcessed": true, "eventId": "e-1"}', "application/json")
        if url.endswith("/pipelines/01JEXEC"):
            return _response(200, b'{"id": "01JEXEC", "status": "RUNNING"}', "application/json")
        return _response(200, b'[{"id": "01JEXEC", "name": "canary"}]', "application/json")

    session = Session(answer)
    client = _client(session, credentials=credentials)
    assert client.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k").execution_id == "01JEXEC"
    assert client.execution("01JEXEC")["status"] == "RUNNING"
    assert [m for m, _, _ in session.sent] == ["POST", "GET", "GET"]
    for _, _, kwargs in session.sent:  # the reads above all, which Gate authenticates
        assert {k: kwargs.get(k) for k in expected} == expected


def test_credentials_modes_are_parsed_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    assert gate_credentials.load("none") == GateCredentials()
    pem = tmp_path / "client.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\ny\n")
    loaded = gate_credentials.load(f"x509:file:{pem}")
    assert loaded.mode == "x509" and Path(loaded.cert_file).read_text().startswith("-----BEGIN CERTIFICATE-----")
    for wrong in ("basic:alice", "x509", "none:x"):
        with pytest.raises(PermanentError, match=r"CD4ML_GATE_AUTH .* is not one of: none, x509:SECRET"):
            gate_credentials.load(wrong)
    only_cert = tmp_path / "cert.pem"
    only_cert.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    with pytest.raises(PermanentError, match="PEM certificate followed by its private key"):
        gate_credentials.load(f"x509:file:{only_cert}")


# --- the worst case is bounded ------------------------------------------------------------------------------


def _hang(clock: Clock) -> Callable[[str, str, dict[str, Any]], requests.Response]:
    """Every call hangs for its whole connect and read timeout, then times out."""

    def answer(method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        connect, read = kwargs["timeout"]
        assert connect <= spinnaker.TIMEOUT[0] and read <= spinnaker.TIMEOUT[1]
        clock.now += connect + read
        raise requests.ReadTimeout("hung")

    return answer


def _trigger_budget() -> float:
    return spinnaker.budget(catalog.load().stage("trigger_canary").timeout_seconds)


def test_trigger_canarys_worst_case_stays_well_under_its_function_timeout() -> None:
    timeout = catalog.load().stage("trigger_canary").timeout_seconds
    budget = _trigger_budget()
    assert budget <= timeout / 2
    clock = Clock()
    client = _client(Session(_hang(clock)), clock, budget_seconds=budget)
    start = clock.now
    # What ledger.once runs for a takeover: recover (ask Gate for the run's execution), then act (the webhook).
    with pytest.raises(RetryableError):
        client.find_execution("digits", "digits-20260101t000000z")
    with pytest.raises(RetryableError, match="time budget"):
        client.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k")
    assert clock.now - start <= budget < timeout / 2


def test_a_gate_that_accepts_the_webhook_then_answers_slowly_stays_within_the_budget() -> None:
    clock = Clock()

    def answer(method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        clock.now += kwargs["timeout"][1] * 0.9  # just under the read timeout, every time
        if method == "POST":
            return _response(200, b'{"eventProcessed": true, "eventId": "e-1"}', "application/json")
        return _response(200, b"[]", "application/json")  # no execution, ever

    budget = _trigger_budget()
    client = _client(Session(answer), clock, budget_seconds=budget, confirm_seconds=spinnaker.CONFIRM_SECONDS)
    start = clock.now
    result = client.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k")
    assert "no pipeline of application 'digits' started within 30 s" in result.reason
    assert clock.now - start <= budget


def test_the_budget_ending_inside_the_window_is_unknown_not_nothing_started() -> None:
    clock = Clock()

    def answer(method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        if kwargs["timeout"][1] < 5:  # each answer takes 5 s: a shorter read timeout ends the call first
            clock.now += kwargs["timeout"][1]
            raise requests.ReadTimeout("slow")
        clock.now += 5
        if method == "POST":
            return _response(200, b'{"eventProcessed": true, "eventId": "e-1"}', "application/json")
        return _response(200, b"[]", "application/json")

    client = _client(Session(answer), clock, budget_seconds=20, confirm_seconds=30)
    with pytest.raises(RetryableError, match=r"could not confirm the execution of event e-1.*time budget"):
        client.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k")
    assert clock.now - 1000.0 <= 20


def test_the_confirmation_window_waits_for_echos_asynchronous_start() -> None:
    clock = Clock()
    started_at = clock.now + 25.0  # Echo's retries of its call to Orca: 5 × 5 s

    def answer(method: str, url: str, kwargs: dict[str, Any]) -> requests.Response:
        clock.now += 0.05
        if method == "POST":
            return _response(200, b'{"eventProcessed": true, "eventId": "e-1"}', "application/json")
        found = [{"id": "01JEXEC", "name": "canary"}] if clock.now >= started_at else []
        return _response(200, json.dumps(found).encode(), "application/json")

    client = _client(Session(answer), clock, budget_seconds=_trigger_budget())
    assert client.confirm_seconds == spinnaker.CONFIRM_SECONDS == 30.0
    assert client.trigger("cd4ml-digits", "digits", {"model": "digits"}, key="k").execution_id == "01JEXEC"


def test_the_confirmation_window_setting_is_checked_against_the_budget() -> None:
    budget = _trigger_budget()
    assert spinnaker.confirm_window("", budget) == 30.0
    assert spinnaker.confirm_window("45", budget) == 45.0
    for wrong in ("0", "-3", "soon", str(budget)):
        with pytest.raises(PermanentError, match="CD4ML_GATE_CONFIRM_SECONDS"):
            spinnaker.confirm_window(wrong, budget)


def test_a_models_key_comes_from_its_own_secret() -> None:
    template = "projects/p/secrets/cd4ml-spinnaker-key-{model}/versions/latest"
    assert spinnaker.key_reference(template, "iris") == "projects/p/secrets/cd4ml-spinnaker-key-iris/versions/latest"
    with pytest.raises(PermanentError, match=r"must contain \{model\}, one key per model"):
        spinnaker.key_reference("projects/p/secrets/cd4ml-spinnaker-webhook-key/versions/latest", "iris")
    assert spinnaker.webhook_source("iris") == "cd4ml-iris"
