"""notify: tell people what happened to a run, where the team already looks (Slack-compatible or JSON webhooks).

parse (any of the catalog's ``triggers``) → read the run → decide (``notice``: what happened, why, what to run
next, or nothing) → for each of the manifest's ``notify`` routes that wants it: act once (``ledger.once`` keyed by
the event id and the channel: a redelivered or duplicated event posts nothing more) → record it on the run.

A webhook URL is a secret (``CD4ML_NOTIFY_SECRETS`` with ``{channel}``: Secret Manager, or ``file:`` locally). It
never reaches a log line, an error or the run record: failures name the channel and the HTTP status only. A post
is retried a few times here, then by Pub/Sub; notify is an observer (catalog ``observer: true``): its exhausted
deliveries are dead-lettered without touching the run, so a webhook outage never blocks or fails the chain.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cd4ml import events
from cd4ml.errors import PermanentError, RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now
from cd4ml.manifest import Route, parse
from cd4ml.run import Run
from cd4ml.runtime import Context, require_run

FAILED = (
    events.TRAINING_FAILED,
    events.EVALUATION_FAILED,
    events.IMAGE_FAILED,
    events.CANARY_FAILED,
    events.RUN_FAILED,
)
#: Seconds to wait before each retry of a post inside one delivery (then Pub/Sub's backoff takes over).
RETRY_DELAYS = (0.5, 2.0)
#: connect, read: a webhook answers in well under a second; 10 s reads made one route's worst case 42 s.
TIMEOUT = (3.05, 5.0)
#: The share of notify's timeout (catalog.yaml) one delivery may spend posting: a route is not started when its
#: worst case would pass it (the redelivery posts the rest; the posted are claimed done), so the function is never
#: stopped mid-post, its claim's heartbeat with it (ten routes' worst cases were 7 minutes against 60 s).
BUDGET_SHARE = 0.5


def route_worst_case() -> float:
    """Seconds one route's post can take: every attempt timing out, with the pauses between them."""
    return (len(RETRY_DELAYS) + 1) * sum(TIMEOUT) + sum(RETRY_DELAYS)


@dataclass(frozen=True)
class Notice:
    """What a person reads: which model and run, what happened, why, and the command to see more."""

    kind: str  # manifest notify[].on: failed | rejected | approval_requested | approval_decided | promoted
    model: str
    run_id: str
    what: str
    reason: str
    command: str
    event_type: str
    event_id: str
    at: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def as_slack(self) -> dict[str, Any]:
        """A Slack incoming-webhook body (``text`` with mrkdwn), which Mattermost, Rocket.Chat and Teams' Slack
        connectors read too."""
        lines = [f"*{self.model}* · `{self.run_id}` · {slack_text(self.what)}"]
        if self.reason:
            lines.append(f"> {slack_text(self.reason)}")
        lines.append(f"`{slack_text(self.command)}`")
        return {"text": "\n".join(lines)}


def slack_text(text: str) -> str:
    """Text shown as written: Slack's three control characters escaped (``&``, ``<``, ``>``), so a reason or a
    trainer's error cannot post ``<!channel>`` or a disguised ``<URL|label>`` link
    (https://api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _failure_reason(event: Event) -> str:
    data = event.data
    if event.type == events.EVALUATION_FAILED:
        return "; ".join(str(r) for r in data.get("reasons") or ())
    return str(data.get("reason") or data.get("error") or "")


def notice(event: Event, run: Run) -> Notice | None:
    """The notice an event deserves, or None (a delivery cleared without an approval is not news)."""
    status = f"cd4ml status {run.run_id}"
    base = {"model": run.model, "run_id": run.run_id, "event_type": event.type, "event_id": event.id}
    at = format_time(event.time)
    if event.type in FAILED:
        step = event.type.removeprefix("cd4ml.").removesuffix(".v1")
        if event.type == events.RUN_FAILED:
            step = f"{event.data['stage']}: {str(event.data['cause']).replace('_', ' ')}"
        return Notice(
            kind="failed", what=f"run failed ({step})", reason=_failure_reason(event), command=status, at=at, **base
        )
    if event.type == events.RUN_REJECTED:
        what = "run rejected: the approval expired" if event.data.get("expired") else "run rejected"
        return Notice(kind="rejected", what=what, reason=str(event.data["reason"]), command=status, at=at, **base)
    if event.type == events.APPROVAL_REQUESTED:
        gate = event.data.get("gate") or {}
        metrics = ", ".join(f"{k} {float(v):.4f}" for k, v in event.data["metrics"].items())
        champion = gate.get("champion_value")
        versus = f" (champion {gate.get('champion_run')}: {float(champion):.4f})" if champion is not None else ""
        return Notice(
            kind="approval_requested",
            what=f"waiting for approval by {', '.join(event.data['approvers'])} until {event.data['expires_at']}",
            reason=metrics + versus,
            command=f"cd4ml approve {run.run_id} --reason …  |  cd4ml reject {run.run_id} --reason …",
            at=at,
            **base,
        )
    if event.type == events.DELIVERY_CLEARED and event.data.get("approval"):
        approval = event.data["approval"]
        return Notice(
            kind="approval_decided",
            what=f"approved by {approval['by']}; delivery goes on",
            reason=str(approval["reason"]),
            command=status,
            at=at,
            **base,
        )
    if event.type == events.MODEL_PROMOTED:
        data = event.data
        was = f" (was {data.get('previous_run_id')})" if data.get("previous_run_id") else ""
        if data.get("superseded_by"):
            was += f"; superseded by run {data['superseded_by']}, {data['alias']} stays at its image"
        return Notice(
            kind="promoted",
            what=f"promoted: {data['alias']} → {data['digest']}{was}",
            reason="",
            command="cd4ml models",
            at=at,
            **base,
        )
    return None


def routes_for(note: Notice, routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """The manifest's routes that asked for this kind of notice."""
    return tuple(r for r in routes if note.kind in r.on)


def body(note: Notice, route: Route) -> dict[str, Any]:
    return note.as_slack() if route.format == "slack" else note.as_json()


class NotDelivered(RetryableError):
    """The webhook did not take the notice; the message names the channel and status, never the URL."""


def post(url: str, payload: Mapping[str, Any], channel: str, delays: tuple[float, ...] = RETRY_DELAYS) -> int:
    """POST ``payload``; retried on connection errors, 429 and 5xx; returns the HTTP status of the accepted post."""
    import requests

    trouble = ""
    for delay in (0.0, *delays):
        time.sleep(delay)
        try:
            response = requests.post(url, json=payload, timeout=TIMEOUT, allow_redirects=False)
        except requests.RequestException as error:
            trouble = type(error).__name__  # its text holds the URL: not repeated
            continue
        if response.status_code < 300:
            return int(response.status_code)
        trouble = f"HTTP {response.status_code}"
        if response.status_code != 429 and response.status_code < 500:
            raise PermanentError(f"notification channel {channel} refused the notice: {trouble}")
    raise NotDelivered(f"notification channel {channel} did not take the notice: {trouble}")


def webhook_url(template: str, channel: str) -> str:
    """The channel's webhook URL from its secret; PermanentError (naming the channel) when it has none."""
    from cd4ml import secrets

    if "{channel}" not in template:
        raise PermanentError(
            "CD4ML_NOTIFY_SECRETS must contain {channel} (projects/P/secrets/cd4ml-notify-{channel}/…)"
        )
    try:
        url = secrets.read(template.replace("{channel}", channel), setting="CD4ML_NOTIFY_SECRETS")
    except PermanentError as missing:
        raise PermanentError(f"no webhook URL for notification channel {channel}", run_id=None) from missing
    if not url.startswith(("https://", "http://")):
        raise PermanentError(f"the secret of notification channel {channel} is not an http(s) URL")
    return url


def notify(message: PubSubMessage, ctx: Context) -> None:
    """Any notable event → one post per route that wants it, at most once per event and channel."""
    from cd4ml import catalog

    event = Event.from_message(message, catalog.load().stage(ctx.settings.stage).triggers)
    run = require_run(ctx, event)
    note = notice(event, run)
    if note is None:
        ctx.info(f"{event.type} is not news; nothing posted", run.run_id)
        return
    deadline = time.monotonic() + catalog.load().stage(ctx.settings.stage).timeout_seconds * BUDGET_SHARE
    for route in routes_for(note, parse(run.manifest).notify):
        if time.monotonic() + route_worst_case() > deadline:
            raise RetryableError(f"notify: out of this delivery's time before {route.channel}; the redelivery posts it")

        def send(route: Route = route) -> dict[str, Any]:
            url = webhook_url(ctx.settings.notify_secrets, route.channel)
            status = post(url, body(note, route), route.channel)
            return {"channel": route.channel, "kind": note.kind, "status": status, "at": format_time(now())}

        result, sent = ctx.once(run.run_id, send, key=f"{event.id}-{route.channel}")
        ctx.info(
            f"notified {route.channel}: {note.what}" if sent else f"{route.channel} already notified of {event.id}",
            run.run_id,
            event_id=event.id,
            channel=route.channel,
        )
        ctx.ledger.note(run.run_id, delivery_fields(event.id, result))


def notification_key(event_id: str, channel: str) -> str:
    """The run record's key of one notice on one channel (a plain Firestore field name)."""
    return "n" + hashlib.sha256(f"{event_id}/{channel}".encode()).hexdigest()[:20]


def delivery_fields(event_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """The run record's fields for one delivery of a notable event: what was posted (the same every time) and how
    often the event reached notify (an increment, so concurrent duplicates all count)."""
    from google.cloud import firestore

    key = f"notifications.{notification_key(event_id, str(result['channel']))}"
    return {
        **{f"{key}.{name}": value for name, value in result.items()},
        f"{key}.event_id": event_id,
        f"{key}.deliveries": firestore.Increment(1),
    }
