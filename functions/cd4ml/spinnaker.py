"""Spinnaker Gate: the webhook that starts a canary pipeline, and the execution search that confirms it.

Gate answers ``{"eventProcessed": true, "eventId": ...}`` even when no pipeline matched, so a trigger is
only confirmed by ``GET /applications/{app}/executions/search?triggerTypes=webhook&eventId=...``.
Echo starts the pipeline asynchronously after that answer, and retries its call to Orca
(``orca.pipelineInitiatorRetryCount`` 5 × ``orca.pipelineInitiatorRetryDelayMillis`` 5000 ms, echo's
PipelineInitiator): the search is repeated for a confirmation window (``CD4ML_GATE_CONFIRM_SECONDS``, 30 s by
default, longer than those 25 s of Echo's retries).

Each model has its own pre-shared key: it travels in the payload (Echo matches it as a payload constraint) and
nowhere else, never in a log line, an event, the run record or an exception message. The webhook source is derived
from the model's name (``webhook_source``), so a model's manifest cannot name another model's trigger.

Every call has a timeout and bounded retries, and a client spends at most its ``budget_seconds`` in all of them
(retries, pauses and the confirmation window included): trigger_canary's whole act stays well under its function's
timeout, so the claim's heartbeat never stops while the webhook may still be called.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import requests

from cd4ml.errors import PermanentError, RetryableError
from cd4ml.gate_credentials import GateCredentials
from cd4ml.manifest import webhook_source

__all__ = [
    "GateClient",
    "WebhookResult",
    "budget",
    "confirm_window",
    "key_reference",
    "webhook_payload",
    "webhook_source",
]

KEY_FIELD = "cd4ml_key"
TIMEOUT = (3.05, 10.0)  # connect, read (each capped by what is left of the client's budget)
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # doubles after each failed attempt: 0.5, 1, 2
CONFIRM_SECONDS = 30.0  # the default confirmation window (CD4ML_GATE_CONFIRM_SECONDS)
CONFIRM_INTERVAL_SECONDS = 0.5  # between searches, doubling up to CONFIRM_INTERVAL_MAX_SECONDS
CONFIRM_INTERVAL_MAX_SECONDS = 4.0
#: The share of a function's timeout (catalog.yaml) its Gate calls may spend: the rest is left for Firestore, the
#: secret and the publish, and the act ends long before the platform could stop the function (and its heartbeat).
BUDGET_SHARE = 0.4


def budget(timeout_seconds: float) -> float:
    """What a function with ``timeout_seconds`` may spend in Gate calls."""
    return timeout_seconds * BUDGET_SHARE


def key_reference(template: str, model: str) -> str:
    """The secret of ``model``'s own webhook key, from ``CD4ML_GATE_KEY_SECRET`` (which must contain ``{model}``)."""
    if "{model}" not in template:
        raise PermanentError(
            "CD4ML_GATE_KEY_SECRET must contain {model}, one key per model "
            "(projects/P/secrets/cd4ml-spinnaker-key-{model}/versions/latest, or file:DIR/spinnaker-key-{model})"
        )
    return template.replace("{model}", model)


def confirm_window(setting: str, budget_seconds: float) -> float:
    """``CD4ML_GATE_CONFIRM_SECONDS`` as seconds; it must leave half the budget to the webhook and the search."""
    try:
        seconds = float(setting or CONFIRM_SECONDS)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= budget_seconds / 2:
        raise PermanentError(
            f"CD4ML_GATE_CONFIRM_SECONDS {setting!r} must be a number of seconds in (0, {budget_seconds / 2:g}] "
            "(at most half of what trigger_canary may spend calling Gate); 30 covers Echo's retries"
        )
    return seconds


@dataclass(frozen=True)
class WebhookResult:
    """What the trigger achieved: an execution, or the reason there is none."""

    event_id: str = ""
    execution_id: str = ""
    pipeline: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def webhook_payload(
    *, model: str, run_id: str, reference: str, metrics: Mapping[str, float], model_artifact: Mapping[str, str]
) -> dict[str, Any]:
    """The webhook body: what the pipeline needs as parameters, and the image as a docker/image artifact."""
    repository, _, digest = reference.partition("@")
    return {
        "model": model,
        "run_id": run_id,
        "image": reference,
        "digest": digest,
        "metrics": dict(metrics),
        "model_sha256": model_artifact.get("sha256", ""),
        "parameters": {"model": model, "run_id": run_id, "image": reference, "digest": digest},
        "artifacts": [{"type": "docker/image", "name": repository, "reference": reference, "version": digest}],
    }


class GateClient:
    """A Gate endpoint, with credentials, timeouts and bounded retries on every call, within one time budget."""

    def __init__(
        self,
        url: str,
        session: requests.Session | None = None,
        *,
        credentials: GateCredentials | None = None,
        budget_seconds: float = 120.0,
        confirm_seconds: float = CONFIRM_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = session or requests.Session()
        self._options = (credentials or GateCredentials()).request_options()
        self._clock = clock
        self._sleep = sleep
        self._started = clock()
        self._deadline = self._started + budget_seconds
        self.confirm_seconds = confirm_seconds

    def remaining(self) -> float:
        """Seconds left of the client's budget."""
        return self._deadline - self._clock()

    def trigger(self, source: str, application: str, payload: Mapping[str, Any], *, key: str) -> WebhookResult:
        """POST the webhook, then confirm that a pipeline execution started for its event id."""
        try:
            answer = self._call("POST", f"/webhooks/webhook/{source}", json={**payload, KEY_FIELD: key})
        except _Unreachable as down:
            # An outage is not the run's fault: retried by redelivery, and the next attempt first asks Gate
            # whether the webhook did start an execution (``find_execution``), so nothing starts twice.
            raise RetryableError(str(down)) from down
        except _Refused as refused:
            return WebhookResult(reason=str(refused))
        event_id = str(answer.get("eventId", "")) if isinstance(answer, dict) else ""
        if not event_id:
            shape = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            return WebhookResult(reason=f"Gate answered the webhook without an eventId: {shape}")
        window_end = self._clock() + self.confirm_seconds
        interval = CONFIRM_INTERVAL_SECONDS
        while True:
            try:
                executions = self._call(
                    "GET",
                    f"/applications/{application}/executions/search",
                    params={"triggerTypes": "webhook", "eventId": event_id},
                )
            except _Unreachable as down:
                raise RetryableError(f"could not confirm the execution of event {event_id}: {down}") from down
            except _Refused as trouble:
                return WebhookResult(event_id=event_id, reason=f"could not confirm the execution: {trouble}")
            if executions:
                first = executions[0]
                return WebhookResult(
                    event_id=event_id, execution_id=str(first.get("id", "")), pipeline=str(first.get("name", ""))
                )
            pause = min(interval, window_end - self._clock())
            if pause <= 0:
                break
            if pause >= self.remaining():
                # The budget ends inside the window: whether Echo started the pipeline is unknown, so the delivery is
                # retried and asks Gate first (``find_execution``) instead of recording "nothing started".
                raise RetryableError(
                    f"could not confirm the execution of event {event_id} within the time budget: "
                    "the next delivery asks Gate for the run's execution"
                )
            self._sleep(pause)
            interval = min(interval * 2, CONFIRM_INTERVAL_MAX_SECONDS)
        return WebhookResult(
            event_id=event_id,
            reason=(
                f"Gate accepted webhook source {source!r} (event {event_id}) but no pipeline of application "
                f"{application!r} started within {self.confirm_seconds:g} s: check the pipeline's webhook trigger, "
                "its payload constraints and the model's key"
            ),
        )

    def find_execution(self, application: str, run_id: str) -> WebhookResult | None:
        """An execution already started for ``run_id`` (after a crash between the webhook and the record)."""
        # Orca returns `size` (default 10) executions, newest first: with more runs of the application since, an
        # unfiltered search missed the run's own and the webhook was called again (chaos: 2 executions for a run).
        # `trigger` narrows the search to executions whose trigger contains this (base64 JSON; strings compare
        # ignoring case or as a full regex match, and a run id has no regex metacharacters).
        wanted = base64.b64encode(json.dumps({"payload": {"run_id": run_id}}).encode()).decode()
        try:
            executions = self._call(
                "GET",
                f"/applications/{application}/executions/search",
                params={"triggerTypes": "webhook", "trigger": wanted},
            )
        except _Unreachable as down:  # unknown is not "none": acting now could start a second execution
            raise RetryableError(f"could not ask Gate for the executions of run {run_id}: {down}") from down
        except _Refused:
            return None
        for execution in executions if isinstance(executions, list) else []:
            trigger = execution.get("trigger") or {}
            if (trigger.get("payload") or {}).get("run_id") == run_id:
                return WebhookResult(
                    event_id=str(trigger.get("eventId", "")),
                    execution_id=str(execution.get("id", "")),
                    pipeline=str(execution.get("name", "")),
                )
        return None

    def execution(self, execution_id: str) -> dict[str, Any]:
        """Gate's ``GET /pipelines/{id}``: the execution with its status and stages (Orca's shape).

        Unreachable, refused or not JSON is a RetryableError: the next tick asks again, the deadline still applies.
        """
        try:
            found = self._call("GET", f"/pipelines/{execution_id}")
        except (_Unreachable, _Refused) as trouble:
            raise RetryableError(f"could not read Spinnaker execution {execution_id}: {trouble}") from trouble
        return dict(found) if isinstance(found, dict) else {}

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One Gate call: ATTEMPTS tries with backoff, each timeout and pause capped by the budget left."""
        delay = BACKOFF_SECONDS
        last = "no attempt: the time budget is spent"
        tried = 0
        for attempt in range(1, ATTEMPTS + 1):
            left = self.remaining()
            if left <= 0:
                break
            tried = attempt
            timeout = (min(TIMEOUT[0], left), min(TIMEOUT[1], left))
            try:
                # No redirects: a redirect is a login page (OAuth, IAP), never Gate's answer, and a redirected POST
                # would become a GET.
                response = self._http.request(
                    method, self.url + path, timeout=timeout, allow_redirects=False, **self._options, **kwargs
                )
            except requests.RequestException as error:
                last = type(error).__name__
            else:
                if response.status_code < 300:
                    return _json(method, self.url + path, response)
                if response.status_code < 400:
                    raise _NotJson(
                        f"Gate answered {method} {self.url + path} with HTTP {response.status_code} to "
                        f"{response.headers.get('Location', '?')}: a login redirect, not Gate's JSON; check "
                        "CD4ML_GATE_AUTH (the credentials cd4ml sends) and Gate's authentication"
                    )
                if response.status_code in (401, 403):
                    # Unknown is not "none": the execution may exist, and acting on "none" would call the webhook again.
                    raise _Unauthorized(
                        f"Gate refused {method} {self.url + path}: HTTP {response.status_code} "
                        f"{response.text[:200]}; check CD4ML_GATE_AUTH (the credentials cd4ml sends) and that its "
                        "Spinnaker user may READ the application"
                    )
                if response.status_code != 429 and response.status_code < 500:
                    raise _Refused(f"Gate refused {method} {path}: HTTP {response.status_code} {response.text[:200]}")
                last = f"HTTP {response.status_code}"
            pause = min(delay, self.remaining())
            if attempt < ATTEMPTS and pause > 0:
                self._sleep(pause)
                delay *= 2
        spent = self._clock() - self._started
        raise _Unreachable(
            f"Spinnaker Gate at {self.url} unreachable after {tried} attempts ({last}; {spent:.0f} s of the "
            "client's time budget spent)"
        )


def _json(method: str, url: str, response: requests.Response) -> Any:
    """The answer's JSON, or _NotJson naming the URL and content type (an HTML login or error page)."""
    content_type = response.headers.get("Content-Type", "") or "no content type"
    try:
        return response.json()
    except ValueError as error:
        page = "an HTML page" if "html" in content_type.lower() else "not JSON"
        raise _NotJson(
            f"Gate answered {method} {url} with HTTP {response.status_code} {content_type}: {page} (a login page or a "
            f"proxy in front of Gate?); check CD4ML_GATE_URL and CD4ML_GATE_AUTH ({type(error).__name__})"
        ) from None


class _Unreachable(Exception):
    pass


class _NotJson(_Unreachable):
    """A 2xx/3xx answer that is not Gate's JSON: retryable (not the run's fault), never retried within the call."""


class _Unauthorized(_Unreachable):
    """401/403: retryable (credentials are configuration, not the run's fault), never retried within the call."""


class _Refused(Exception):
    pass
