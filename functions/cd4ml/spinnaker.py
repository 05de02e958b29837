"""Spinnaker Gate: the webhook that starts a canary pipeline, and the execution search that confirms it.

Gate answers ``{"eventProcessed": true, "eventId": ...}`` even when no pipeline matched, so a trigger is
only confirmed by ``GET /applications/{app}/executions/search?triggerTypes=webhook&eventId=...``.
The pre-shared key travels in the payload (Echo matches it as a payload constraint) and nowhere else:
never in a log line, an event, the run record or an exception message.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import requests

from cd4ml.errors import RetryableError

KEY_FIELD = "cd4ml_key"
TIMEOUT = (3.05, 10.0)  # connect, read
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # doubles after each failed attempt: 0.5, 1, 2
CONFIRM_ATTEMPTS = 10
CONFIRM_INTERVAL_SECONDS = 0.5


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
    """A Gate endpoint, with timeouts and bounded retries on every call."""

    def __init__(self, url: str, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = session or requests.Session()

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
        event_id = str(answer.get("eventId", ""))
        if not event_id:
            return WebhookResult(reason=f"Gate answered the webhook without an eventId: {sorted(answer)}")
        for _ in range(CONFIRM_ATTEMPTS):
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
            time.sleep(CONFIRM_INTERVAL_SECONDS)
        return WebhookResult(
            event_id=event_id,
            reason=(
                f"Gate accepted webhook source {source!r} (event {event_id}) but no pipeline of application "
                f"{application!r} started: check the pipeline's webhook trigger, its payload constraints and the key"
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
        for execution in executions:
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

        Unreachable or refused is a RetryableError: the next tick asks again, the deadline still applies.
        """
        try:
            found = self._call("GET", f"/pipelines/{execution_id}")
        except (_Unreachable, _Refused) as trouble:
            raise RetryableError(f"could not read Spinnaker execution {execution_id}: {trouble}") from trouble
        return dict(found) if isinstance(found, dict) else {}

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        delay = BACKOFF_SECONDS
        last = ""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self._http.request(method, self.url + path, timeout=TIMEOUT, **kwargs)
            except requests.RequestException as error:
                last = type(error).__name__
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code != 429 and response.status_code < 500:
                    raise _Refused(f"Gate refused {method} {path}: HTTP {response.status_code} {response.text[:200]}")
                last = f"HTTP {response.status_code}"
            if attempt < ATTEMPTS:
                time.sleep(delay)
                delay *= 2
        raise _Unreachable(f"Spinnaker Gate at {self.url} unreachable after {ATTEMPTS} attempts ({last})")


class _Unreachable(Exception):
    pass


class _Refused(Exception):
    pass
