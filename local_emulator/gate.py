"""A test double of Spinnaker Gate: webhook triggers with Echo's matching, and the execution search.

This is NOT Spinnaker. It implements just what cd4ml's trigger_canary talks to, with the behaviour of
Gate + Echo + Orca that a caller can observe:

- `POST /webhooks/webhook/{source}`: every configured pipeline whose enabled `webhook` trigger has this
  `source` and whose `payloadConstraints` all hold starts an execution. A constraint is a Java regex
  matched as a substring search (`find`, here `re.search`) against the payload value's string form at
  that key (a list of regexes matches if any does; `$.a.b[0]` or `a.b` reach into nested objects). The
  answer is always `{"eventProcessed": true, "eventId": "<uuid>"}`, even when nothing matched: a wrong
  pre-shared key (itself a payload constraint) is only visible as the absence of an execution.
- `GET /applications/{app}/executions/search?triggerTypes=webhook&eventId=...` lists executions
  (app `*` searches every application), newest first.
- `GET /pipelines/{id}`: one execution. `GET /health`: `{"status": "UP", ...}`.
- `GET /webhooks/recorded` (stand-in only): every webhook received, with its payload, for tests.

Executions are RUNNING for --execution-seconds, then SUCCEEDED. State is kept in memory and in
DIR/executions.json and DIR/webhooks.json. Every response carries `X-Test-Double: spinnaker-gate`.

    python -m local_emulator.gate --host 127.0.0.1 --port P --state-dir DIR --config pipelines.yaml

Config (YAML or JSON)::

    pipelines:
      - application: digits
        name: canary
        parameterConfig: [{name: stage, default: canary}]
        triggers:                     # or `trigger:` with one mapping
          - type: webhook
            source: cd4ml
            enabled: true
            payloadConstraints: {secret: "^KEY$", model: digits}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from local_emulator._service import atomic_write, configure_logging, stop_event_on_signals

TEST_DOUBLE_HEADER = ("X-Test-Double", "spinnaker-gate")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")

_log = logging.getLogger("gate")


class ConfigError(ValueError):
    """The pipeline config cannot be used; the message names every problem found."""


@dataclass(frozen=True)
class Constraint:
    """One payload constraint: a key (or path) and the regexes of which one must be found in its value."""

    key: str
    patterns: tuple[re.Pattern[str], ...]

    def holds(self, payload: Mapping[str, Any]) -> bool:
        found, value = lookup(payload, self.key)
        if not found or value is None:
            return False
        text = java_string(value)
        return any(pattern.search(text) for pattern in self.patterns)


@dataclass(frozen=True)
class WebhookTrigger:
    """A pipeline's webhook trigger."""

    source: str
    constraints: tuple[Constraint, ...] = ()
    enabled: bool = True

    def matches(self, source: str, payload: Mapping[str, Any]) -> bool:
        return self.enabled and self.source == source and all(c.holds(payload) for c in self.constraints)


@dataclass(frozen=True)
class Pipeline:
    """A pipeline config: who owns it, what triggers it, and its parameters' defaults."""

    application: str
    name: str
    id: str
    triggers: tuple[WebhookTrigger, ...]
    parameter_defaults: tuple[tuple[str, str], ...] = ()
    disabled: bool = False


@dataclass(frozen=True)
class Webhook:
    """One received webhook."""

    event_id: str
    source: str
    payload: Mapping[str, Any]
    received_ms: int
    execution_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Execution:
    """A pipeline execution started by a webhook, in Orca's JSON shape when rendered."""

    id: str
    pipeline: Pipeline
    trigger: Mapping[str, Any]
    start_ms: int
    duration_ms: int = 2000

    def record(self) -> dict[str, Any]:
        """The stored form; status and end time are derived when read (see GateState)."""
        return {
            "type": "PIPELINE",
            "id": self.id,
            "application": self.pipeline.application,
            "name": self.pipeline.name,
            "pipelineConfigId": self.pipeline.id,
            "buildTime": self.start_ms,
            "startTime": self.start_ms,
            "canceled": False,
            "trigger": dict(self.trigger),
            "stages": [
                {"id": f"{self.id}-1", "type": "wait", "name": "canary (Gate test double)", "startTime": self.start_ms}
            ],
            "testDouble": True,
            "_durationMs": self.duration_ms,
        }


def lookup(payload: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    """The value at key: a top-level key first, else a path `a.b[0].c` (optionally `$.`-prefixed)."""
    if key in payload:
        return True, payload[key]
    path = key[2:] if key.startswith("$.") else key
    if "." not in path and "[" not in path:
        return False, None
    value: Any = payload
    for name, index in _PATH_TOKEN.findall(path):
        if name and isinstance(value, Mapping) and name in value:
            value = value[name]
        elif index and isinstance(value, list) and int(index) < len(value):
            value = value[int(index)]
        else:
            return False, None
    return True, value


def java_string(value: Any) -> str:
    """The string Echo matches a constraint against: Java's toString for scalars (booleans lowercase)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _patterns(key: str, raw: Any, problems: list[str]) -> tuple[re.Pattern[str], ...]:
    texts = [java_string(item) for item in raw] if isinstance(raw, list) else [java_string(raw)]
    compiled = []
    for text in texts:
        try:
            compiled.append(re.compile(text))
        except re.error as error:
            problems.append(f"payloadConstraints[{key!r}]: invalid regex {text!r}: {error}")
    return tuple(compiled)


def parse_config(document: Mapping[str, Any]) -> tuple[Pipeline, ...]:
    """Pipelines from a config document; raises ConfigError listing every problem at once."""
    problems: list[str] = []
    pipelines: list[Pipeline] = []
    raw_pipelines = document.get("pipelines")
    if not isinstance(raw_pipelines, list):
        raise ConfigError("config needs a `pipelines` list")
    for number, raw in enumerate(raw_pipelines):
        where = f"pipelines[{number}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: not a mapping")
            continue
        application, name = raw.get("application"), raw.get("name")
        if not isinstance(application, str) or not application:
            problems.append(f"{where}: `application` is required")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: `name` is required")
        raw_triggers = raw.get("triggers", [raw["trigger"]] if "trigger" in raw else [])
        triggers = []
        for t_number, trig in enumerate(raw_triggers if isinstance(raw_triggers, list) else []):
            t_where = f"{where}.triggers[{t_number}]"
            if not isinstance(trig, Mapping) or str(trig.get("type", "")).lower() != "webhook":
                continue  # other trigger types exist in Spinnaker; this double only fires webhooks
            source = trig.get("source")
            if not isinstance(source, str) or not source:
                problems.append(f"{t_where}: `source` is required")
                continue
            constraints_raw = trig.get("payloadConstraints") or {}
            if not isinstance(constraints_raw, Mapping):
                problems.append(f"{t_where}: `payloadConstraints` must be a mapping")
                continue
            constraints = tuple(
                Constraint(str(k), _patterns(str(k), v, problems)) for k, v in constraints_raw.items() if v is not None
            )
            triggers.append(WebhookTrigger(source, constraints, bool(trig.get("enabled", True))))
        defaults = tuple(
            (str(p["name"]), java_string(p["default"]))
            for p in raw.get("parameterConfig", []) or []
            if isinstance(p, Mapping) and "name" in p and p.get("default") is not None
        )
        if isinstance(application, str) and isinstance(name, str):
            pipeline_id = str(raw.get("id") or uuid.uuid5(uuid.NAMESPACE_URL, f"spinnaker:{application}/{name}"))
            pipelines.append(
                Pipeline(application, name, pipeline_id, tuple(triggers), defaults, bool(raw.get("disabled", False)))
            )
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(pipelines)


def load_config(path: Path) -> tuple[Pipeline, ...]:
    """Read a YAML or JSON config file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # deferred: only YAML configs need it

        document = yaml.safe_load(text) or {}
    else:
        document = json.loads(text)
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping")
    return parse_config(document)


def new_ulid(now_ms: int) -> str:
    """A ULID, as Orca gives execution ids: 48 bits of milliseconds, 80 random bits, Crockford base32."""
    value = (now_ms << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class BadWebhook(ValueError):
    """A payload Echo would refuse to deserialize (HTTP 400)."""


def trigger_for(
    pipeline: Pipeline, trigger: WebhookTrigger, source: str, payload: Mapping[str, Any], event_id: str
) -> dict[str, Any]:
    """The execution's trigger as Echo builds it: parameters (defaults + payload), payload, artifacts, eventId."""
    parameters: dict[str, str] = dict(pipeline.parameter_defaults)
    raw_parameters = payload.get("parameters", {})
    if not isinstance(raw_parameters, Mapping):
        raise BadWebhook("`parameters` must be an object")
    parameters.update({str(k): java_string(v) for k, v in raw_parameters.items() if v is not None})
    artifacts = payload.get("artifacts", [])
    if not isinstance(artifacts, list) or not all(isinstance(a, Mapping) for a in artifacts):
        raise BadWebhook("`artifacts` must be a list of objects")
    return {
        "type": "webhook",
        "source": source,
        "enabled": trigger.enabled,
        "payloadConstraints": {c.key: [p.pattern for p in c.patterns] for c in trigger.constraints},
        "user": "[anonymous]",
        "parameters": parameters,
        "payload": dict(payload),
        "artifacts": [dict(a) for a in artifacts],
        "eventId": event_id,
    }


class GateState:
    """Pipelines, webhooks received and executions started; thread-safe; saved under the state dir."""

    def __init__(self, pipelines: Sequence[Pipeline], state_dir: Path, execution_ms: int) -> None:
        self.pipelines = tuple(pipelines)
        self._dir = state_dir
        self._execution_ms = execution_ms
        self._lock = threading.Lock()
        self._webhooks: list[dict[str, Any]] = []
        self._executions: list[dict[str, Any]] = []
        self._load()

    def _load(self) -> None:
        for name, target in (("webhooks.json", self._webhooks), ("executions.json", self._executions)):
            path = self._dir / name
            if path.exists():
                target.extend(json.loads(path.read_text(encoding="utf-8")))

    def _save(self) -> None:
        for name, items in (("webhooks.json", self._webhooks), ("executions.json", self._executions)):
            with atomic_write(self._dir / name) as handle:
                json.dump(items, handle)

    def receive(self, source: str, payload: Mapping[str, Any]) -> Webhook:
        """Record a webhook and start an execution for every matching pipeline."""
        now_ms = int(time.time() * 1000)
        event_id = str(uuid.uuid4())
        started: list[Execution] = []
        for pipeline in self.pipelines:
            if pipeline.disabled:
                continue
            for trigger in pipeline.triggers:
                if trigger.matches(source, payload):
                    started.append(
                        Execution(
                            new_ulid(now_ms),
                            pipeline,
                            trigger_for(pipeline, trigger, source, payload, event_id),
                            now_ms,
                            self._execution_ms,
                        )
                    )
                    break
        webhook = Webhook(event_id, source, payload, now_ms, tuple(e.id for e in started))
        with self._lock:
            self._webhooks.append(
                {
                    "eventId": event_id,
                    "source": source,
                    "receivedTime": now_ms,
                    "payload": dict(payload),
                    "executionIds": list(webhook.execution_ids),
                }
            )
            self._executions.extend(execution.record() for execution in started)
            self._save()
        return webhook

    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(w) for w in self._webhooks]

    def _render(self, record: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
        rendered = {k: v for k, v in record.items() if not k.startswith("_")}
        finished = now_ms - int(record["startTime"]) >= int(record["_durationMs"])
        status = "SUCCEEDED" if finished else "RUNNING"
        end = int(record["startTime"]) + int(record["_durationMs"]) if finished else None
        rendered["status"] = status
        rendered["endTime"] = end
        rendered["stages"] = [{**stage, "status": status, "endTime": end} for stage in record["stages"]]
        return rendered

    def execution(self, execution_id: str) -> dict[str, Any] | None:
        now_ms = int(time.time() * 1000)
        with self._lock:
            for record in self._executions:
                if record["id"] == execution_id:
                    return self._render(record, now_ms)
        return None

    def search(self, application: str, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        """Orca's executions search: filters triggerTypes, eventId, pipelineName, statuses, time bounds; pages."""

        def _one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        def _set(name: str) -> set[str]:
            return {item.strip() for value in query.get(name, []) for item in value.split(",") if item.strip()}

        trigger_types = _set("triggerTypes")
        statuses = {s.upper() for s in _set("statuses")}
        event_id, pipeline_name = _one("eventId"), _one("pipelineName")
        start_bound = int(_one("triggerTimeStartBoundary") or 0)
        end_bound = int(_one("triggerTimeEndBoundary") or 2**63 - 1)
        now_ms = int(time.time() * 1000)
        with self._lock:
            records = [self._render(r, now_ms) for r in self._executions]
        found = [
            r
            for r in records
            if (application == "*" or r["application"] == application)
            and (not trigger_types or r["trigger"]["type"] in trigger_types)
            and (event_id is None or r["trigger"].get("eventId") == event_id)
            and (pipeline_name is None or r["name"] == pipeline_name)
            and (not statuses or r["status"] in statuses)
            and start_bound <= r["buildTime"] <= end_bound
        ]
        # Newest first; within one millisecond, the later start first (ULIDs are not monotonic there).
        order = {id(r): n for n, r in enumerate(records)}
        found.sort(key=lambda r: (r["buildTime"], order[id(r)]), reverse=True)
        if (_one("reverse") or "false").lower() == "true":
            found.reverse()
        start = int(_one("startIndex") or 0)
        size = int(_one("size") or 10)
        return found[start : start + size]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: GateState) -> None:
        super().__init__(address, _Handler)
        self.state = state


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(*TEST_DOUBLE_HEADER)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(
            code,
            {
                "status": code,
                "error": message,
                "message": message,
                "path": urlsplit(self.path).path,
                "testDouble": True,
            },
        )

    def do_POST(self) -> None:
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(parts) != 3 or parts[:2] != ["webhooks", "webhook"]:
            self._error(404, "Not Found")
            return
        try:
            payload = json.loads(body or b"{}")
            if not isinstance(payload, dict):
                raise BadWebhook("the webhook body must be a JSON object")
            webhook = self.server.state.receive(parts[2], payload)
        except ValueError as error:  # includes BadWebhook and malformed JSON
            _log.info("webhook refused", extra={"source": parts[2], "reason": str(error)})
            self._error(400, str(error))
            return
        _log.info(
            "webhook processed",
            extra={"source": webhook.source, "event_id": webhook.event_id, "executions": list(webhook.execution_ids)},
        )
        self._send(200, {"eventProcessed": True, "eventId": webhook.event_id})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        state = self.server.state
        if parts == ["health"]:
            self._send(200, {"status": "UP", "testDouble": True, "service": "Spinnaker Gate test double (cd4ml)"})
        elif parts == ["webhooks", "recorded"]:
            self._send(200, state.webhooks())
        elif len(parts) == 4 and parts[0] == "applications" and parts[2:] == ["executions", "search"]:
            try:
                self._send(200, state.search(parts[1], parse_qs(url.query)))
            except ValueError as error:
                self._error(400, str(error))
        elif len(parts) == 2 and parts[0] == "pipelines":
            execution = state.execution(parts[1])
            if execution is None:
                self._error(404, f"Execution not found: {parts[1]}")
            else:
                self._send(200, execution)
        else:
            self._error(404, "Not Found")

    def log_message(self, format: str, *args: Any) -> None:
        return


def make_server(host: str, port: int, state: GateState) -> ThreadingHTTPServer:
    """A bound (not yet serving) Gate stand-in; port 0 picks a free one."""
    return _Server((host, port), state)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_emulator.gate", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="executions.json and webhooks.json")
    parser.add_argument("--config", type=Path, required=True, help="pipelines with webhook triggers (YAML or JSON)")
    parser.add_argument("--execution-seconds", type=float, default=2.0, help="how long an execution stays RUNNING")
    args = parser.parse_args(argv)
    configure_logging("gate")
    stop = stop_event_on_signals()
    try:
        pipelines = load_config(args.config)
    except (OSError, ValueError) as error:
        _log.error("bad config", extra={"config": str(args.config), "error": str(error)})
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    server = make_server(args.host, args.port, GateState(pipelines, args.state_dir, int(args.execution_seconds * 1000)))
    thread = threading.Thread(target=server.serve_forever, name="gate", daemon=True)
    thread.start()
    _log.info(
        "ready",
        extra={
            "address": f"{args.host}:{server.server_address[1]}",
            "pipelines": [f"{p.application}/{p.name}" for p in pipelines],
            "pid": os.getpid(),
        },
    )
    stop.wait()
    server.shutdown()
    server.server_close()
    _log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
