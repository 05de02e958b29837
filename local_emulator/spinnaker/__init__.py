"""A test double of Spinnaker Gate: webhooks matched as Echo does, executions searched as Orca does.

This is NOT Spinnaker. It implements what cd4ml's trigger_canary talks to, with the behaviour of
Gate + Echo + Orca that a caller can observe (each rule cites its source in the private modules):

- `POST /webhooks/{type}/{source}` (Gate's WebhookController → Echo's WebhooksController): always
  `{"eventProcessed": true, "eventId": "<uuid>"}` for a JSON object, even when nothing matched: a wrong
  pre-shared key (itself a payload constraint) is only visible as the absence of an execution. Which
  pipelines start is Echo's WebhookEventHandler (`_gate_pipelines`) with ArtifactMatcher's and kork's
  ExpectedArtifact's rules (`_echo_matching`). `type` `git` only knows Echo's SCM sources; `cdevents` is
  not implemented (501).
- `GET /applications/{app}/executions/search?...`: Orca's searchForPipelinesByTrigger (`_orca_search`).
- `GET /pipelines/{id}`: one execution. `GET /health`: `{"status": "UP", ...}`.
- `GET /webhooks/recorded` (stand-in only): every webhook received, its payload, the executions it
  started, and why Echo would have dropped it (`dropped`), for tests.

Echo starts a pipeline asynchronously after Gate's answer (and retries its call to Orca, 5 × 5 s): an execution
becomes visible to reads --start-delay-seconds after its webhook (default 1 s).

Authentication as Gate's x509 mode does it (gate-x509 ``X509Config`` on gate-core ``AuthConfig``): with --tls-cert
the stand-in speaks HTTPS and asks for a client certificate (Gate's ``server.ssl.client-auth: want``), verified
against --client-ca; with --require-auth every call but ``POST /webhooks/**`` and ``GET /health`` needs one, else
403 ``Access Denied`` (the x509 configurer's Http403ForbiddenEntryPoint). The user is the certificate's CN.

Executions run through their pipeline's stages (Orca statuses) for --execution-seconds, then end as the pipeline's `outcome` says (SUCCEEDED by default; TERMINAL, CANCELED or STOPPED at a stage; RUNNING never ends), or as `PUT /test-double/outcomes/RUN_ID` set for one run. State is kept in memory and in
DIR/executions.json and DIR/webhooks.json. Every response carries `X-Test-Double: spinnaker-gate`.

    python -m local_emulator.spinnaker --host 127.0.0.1 --port P --state-dir DIR --config pipelines.yaml \
        [--tls-cert server.pem --client-ca ca.pem --require-auth] [--start-delay-seconds S]

Config (YAML or JSON), pipelines as Front50 stores them::

    pipelines:
      - application: digits
        name: canary
        parameterConfig: [{name: stage, default: canary}]
        expectedArtifacts: [{id: img, matchArtifact: {type: docker/image, name: ".*/digits"}}]
        triggers:                     # or `trigger:` with one mapping
          - type: webhook             # exactly "webhook"
            source: cd4ml
            enabled: true             # Echo reads a missing `enabled` as false
            payloadConstraints: {secret: "^KEY$", model: digits}
            expectedArtifactIds: [img]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from local_emulator.common import faults
from local_emulator.common.service import atomic_write, configure_logging, stop_event_on_signals
from local_emulator.spinnaker.echo_matching import EventDropped
from local_emulator.spinnaker.orca_execution import render_execution
from local_emulator.spinnaker.orca_search import SearchError, search
from local_emulator.spinnaker.pipelines import (
    OUTCOMES,
    WEBHOOK,
    ConfigError,
    Pipeline,
    WebhookTrigger,
    convert_event,
    execution_trigger,
    load_config,
    matching_pipelines,
    parse_config,
)

__all__ = [
    "TEST_DOUBLE_HEADER", "ConfigError", "GateState", "Pipeline", "SearchError", "Webhook", "WebhookTrigger",
    "load_config", "main", "make_server", "new_ulid", "parse_config", "tls_context",
]  # fmt: skip

TEST_DOUBLE_HEADER = ("X-Test-Double", "spinnaker-gate")
SCM_SOURCES = ("bitbucket", "github", "gitlab", "stash")  # echo-webhooks scm/*WebhookEventHandler.handles
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_log = logging.getLogger("gate")


class BadWebhook(ValueError):
    """A body Gate refuses before Echo sees it (HTTP 400): not a JSON object."""


@dataclass(frozen=True)
class Webhook:
    """One received webhook and what it started (nothing, with the reason, when Echo would drop it)."""

    event_id: str
    source: str
    payload: Mapping[str, Any]
    received_ms: int
    execution_ids: tuple[str, ...] = ()
    type: str = WEBHOOK
    dropped: str | None = None


def new_ulid(now_ms: int) -> str:
    """A ULID, as Orca gives execution ids: 48 bits of milliseconds, 80 random bits, Crockford base32."""
    value = (now_ms << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _reject_constant(name: str) -> Any:
    raise BadWebhook(f"JSON parse error: non-standard token '{name}'")  # Jackson refuses NaN/Infinity


def parse_body(body: bytes) -> dict[str, Any]:
    """Gate's `@RequestBody Map`: a JSON object, else 400."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant) if body.strip() else None
    except ValueError as error:
        raise BadWebhook(f"JSON parse error: {error}") from error
    if not isinstance(payload, dict):
        raise BadWebhook("Required request body is missing or is not a JSON object")
    return payload


class GateState:
    """Pipelines, webhooks received and executions started; thread-safe; saved under the state dir."""

    def __init__(
        self, pipelines: Sequence[Pipeline], state_dir: Path, execution_ms: int, start_delay_ms: int = 0
    ) -> None:
        self.pipelines = tuple(pipelines)
        self._dir = state_dir
        self._execution_ms = execution_ms
        self._start_delay_ms = start_delay_ms  # Echo's asynchronous start: reads see an execution this much later
        self._lock = threading.Lock()
        self._webhooks: list[dict[str, Any]] = []
        self._executions: list[dict[str, Any]] = []
        self._outcomes: dict[str, dict[str, str]] = {}
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

    def receive(self, source: str, payload: Mapping[str, Any], webhook_type: str = WEBHOOK) -> Webhook:
        """Record a webhook and start an execution for every (pipeline, trigger) Echo would match."""
        now_ms = int(time.time() * 1000)
        event_id = str(uuid.uuid4())
        records: list[dict[str, Any]] = []
        dropped = None
        try:
            event = convert_event(webhook_type, source, payload)
            for pipeline, trigger in matching_pipelines(self.pipelines, event):
                records.append(self._record(pipeline, execution_trigger(pipeline, trigger, event, event_id), now_ms))
        except EventDropped as error:  # Echo's EventPropagator logs the exception; nothing starts
            records, dropped = [], str(error)
            _log.warning("webhook dropped as Echo would", extra={"event_id": event_id, "reason": dropped})
        webhook = Webhook(event_id, source, payload, now_ms, tuple(r["id"] for r in records), webhook_type, dropped)
        with self._lock:
            self._webhooks.append(
                {
                    "eventId": event_id,
                    "type": webhook_type,
                    "source": source,
                    "receivedTime": now_ms,
                    "payload": dict(payload),
                    "executionIds": list(webhook.execution_ids),
                    "dropped": dropped,
                }
            )
            self._executions.extend(records)
            self._save()
        return webhook

    def _record(self, pipeline: Pipeline, trigger: dict[str, Any], now_ms: int) -> dict[str, Any]:
        """An execution in Orca's JSON shape; its stages' statuses and its end are derived when read.

        It runs through the pipeline's stages to the outcome its config names, or the one a test set for the
        webhook's ``run_id`` (``PUT /test-double/outcomes/{run_id}``).
        """
        execution_id = new_ulid(now_ms)
        run_id = str((trigger.get("payload") or {}).get("run_id") or "")
        outcome = self._outcomes.get(run_id) or {"status": pipeline.outcome.status, "stage": pipeline.outcome.stage}
        return {
            "type": "PIPELINE",
            "id": execution_id,
            "application": pipeline.application,
            "name": pipeline.name,
            "pipelineConfigId": pipeline.id,
            "buildTime": now_ms + self._start_delay_ms,
            "startTime": now_ms + self._start_delay_ms,
            "canceled": False,
            "trigger": trigger,
            "stages": [
                {"id": f"{execution_id}-{n}", "type": "wait", "name": name, "refId": str(n)}
                for n, name in enumerate(pipeline.stages, start=1)
            ],
            "testDouble": True,
            "_durationMs": self._execution_ms,
            "_visibleMs": now_ms + self._start_delay_ms,
            "_outcome": outcome,
        }

    def set_outcome(self, run_id: str, status: str, stage: str) -> None:
        """Stand-in only: how the next execution started for ``run_id`` ends."""
        with self._lock:
            self._outcomes[run_id] = {"status": status, "stage": stage}

    def webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(w) for w in self._webhooks]

    def execution(self, execution_id: str) -> dict[str, Any] | None:
        now_ms = int(time.time() * 1000)
        with self._lock:
            for record in self._executions:
                if record["id"] == execution_id and _started(record, now_ms):
                    return render_execution(record, now_ms)
        return None

    def _pipeline_ids(self, application: str, pipeline_name: str | None) -> list[str]:
        """Front50's part of the search: every pipeline for `*`, else the application's (by name)."""
        return [
            p.id
            for p in self.pipelines
            if (application == "*" or p.application.lower() == application.lower())
            and (not pipeline_name or p.name == pipeline_name)
        ]

    def search(self, application: str, query: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
        """Orca's searchForPipelinesByTrigger; raises SearchError (with its HTTP status) as Orca would."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            records = [render_execution(r, now_ms) for r in self._executions if _started(r, now_ms)]
        return search(application, query, self._pipeline_ids, records)


def _started(record: Mapping[str, Any], now_ms: int) -> bool:
    """Whether Echo's asynchronous start has made the execution visible to reads yet."""
    return int(record.get("_visibleMs", 0)) <= now_ms


#: What Gate lets through without authentication (gate-core AuthConfig: permitAll), as (method or None, path prefix).
_ANONYMOUS = (("POST", "/webhooks/"), (None, "/health"), (None, "/error"), ("OPTIONS", "/"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], state: GateState, tls: ssl.SSLContext | None = None, require_auth: bool = False
    ) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.require_auth = require_auth
        if tls is not None:  # the handshake runs in the request's thread (_Handler.setup), not in accept
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.info("connection dropped", extra={"client": str(client_address)})  # a refused TLS handshake, a reset


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()  # a client certificate the CA did not sign fails here
        super().setup()

    def _user(self) -> str | None:
        """The CN of the verified client certificate (Gate's X509 user), or None without one."""
        if not isinstance(self.request, ssl.SSLSocket):
            return None
        certificate: Any = self.request.getpeercert() or {}
        names = [attribute for rdn in certificate.get("subject", ()) for attribute in rdn]
        return next((str(value) for name, value in names if name == "commonName"), None)

    def _authenticated(self, method: str) -> bool:
        """Gate's rule: anonymous only where AuthConfig permits all, else 403 Access Denied."""
        path = urlsplit(self.path).path
        if not self.server.require_auth or self._user() is not None:
            return True
        if any((m is None or m == method) and path.startswith(prefix) for m, prefix in _ANONYMOUS):
            return True
        _log.info("unauthenticated call refused", extra={"method": method, "path": path})
        self._send(403, {"timestamp": int(time.time() * 1000), "status": 403, "error": "Forbidden",
                         "message": "Access Denied", "path": path})  # fmt: skip
        return False

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
        if not self._authenticated("POST"):
            return
        if faults.is_down("gate"):  # the chaos session's outage: Gate's load balancer answers 503
            self._error(503, faults.OUTAGE)
            return
        if len(parts) != 3 or parts[0] != "webhooks":
            self._error(404, "Not Found")
            return
        webhook_type, source = parts[1], parts[2]
        if webhook_type == "cdevents":
            self._error(501, "CDEvents webhooks are not implemented by the Gate test double")
            return
        try:
            payload = parse_body(body)
            if webhook_type == "git" and source not in SCM_SOURCES:  # ScmWebhookHandler.getHandler
                raise BadWebhook(f"Invalid SCM handler source{source}")
        except BadWebhook as error:
            _log.info("webhook refused", extra={"source": source, "reason": str(error)})
            self._error(400, str(error))
            return
        webhook = self.server.state.receive(source, payload, webhook_type)
        faults.effect_done(
            "gate.webhook", [str(v) for v in payload.values() if isinstance(v, str)], self.client_address[1]
        )
        _log.info(
            "webhook processed",
            extra={"source": source, "event_id": webhook.event_id, "executions": list(webhook.execution_ids)},
        )
        self._send(200, {"eventProcessed": True, "eventId": webhook.event_id})

    def do_PUT(self) -> None:
        """Stand-in only: ``PUT /test-double/outcomes/{run_id}`` ``{"status": "TERMINAL", "stage": "…"}``."""
        parts = [unquote(p) for p in urlsplit(self.path).path.strip("/").split("/")]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self._authenticated("PUT"):
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        if (
            len(parts) != 3
            or parts[:2] != ["test-double", "outcomes"]
            or not isinstance(body, dict)
            or body.get("status") not in OUTCOMES
        ):
            self._error(400, f"PUT /test-double/outcomes/RUN_ID with a status among {', '.join(OUTCOMES)}")
            return
        self.server.state.set_outcome(parts[2], str(body["status"]), str(body.get("stage") or ""))
        self._send(200, {"runId": parts[2], **body})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        state = self.server.state
        if not self._authenticated("GET"):
            return
        if faults.is_down("gate") and parts != ["health"]:
            self._error(503, faults.OUTAGE)
        elif parts == ["health"]:
            self._send(200, {"status": "UP", "testDouble": True, "service": "Spinnaker Gate test double (cd4ml)"})
        elif parts == ["webhooks", "recorded"]:
            self._send(200, state.webhooks())
        elif len(parts) == 4 and parts[0] == "applications" and parts[2:] == ["executions", "search"]:
            try:
                self._send(200, state.search(parts[1], parse_qs(url.query, keep_blank_values=True)))
            except SearchError as error:
                self._error(error.status, str(error))
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


def tls_context(certificate: Path, client_ca: Path | None) -> ssl.SSLContext:
    """HTTPS with ``certificate`` (PEM certificate and key), asking for a client certificate signed by ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL  # Gate's client-auth "want": a webhook needs no certificate
    return context


def make_server(
    host: str, port: int, state: GateState, tls: ssl.SSLContext | None = None, require_auth: bool = False
) -> ThreadingHTTPServer:
    """A bound (not yet serving) Gate stand-in; port 0 picks a free one."""
    return _Server((host, port), state, tls, require_auth)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_emulator.spinnaker", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="executions.json and webhooks.json")
    parser.add_argument("--config", type=Path, required=True, help="pipelines with webhook triggers (YAML or JSON)")
    parser.add_argument("--execution-seconds", type=float, default=2.0, help="how long an execution stays RUNNING")
    parser.add_argument(
        "--start-delay-seconds", type=float, default=1.0, help="how long after its webhook an execution is visible"
    )
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this PEM certificate and key")
    parser.add_argument("--client-ca", type=Path, help="CA of the client certificates Gate accepts (with --tls-cert)")
    parser.add_argument(
        "--require-auth", action="store_true", help="every call but webhooks and health needs a client certificate"
    )
    args = parser.parse_args(argv)
    if args.require_auth and not (args.tls_cert and args.client_ca):
        parser.error("--require-auth needs --tls-cert and --client-ca (Gate's x509 authentication)")
    configure_logging("gate")
    stop = stop_event_on_signals()
    try:
        pipelines = load_config(args.config)
    except (OSError, ValueError) as error:
        _log.error("bad config", extra={"config": str(args.config), "error": str(error)})
        return 2
    args.state_dir.mkdir(parents=True, exist_ok=True)
    state = GateState(
        pipelines, args.state_dir, int(args.execution_seconds * 1000), int(args.start_delay_seconds * 1000)
    )
    tls = tls_context(args.tls_cert, args.client_ca) if args.tls_cert else None
    server = make_server(args.host, args.port, state, tls, args.require_auth)
    thread = threading.Thread(target=server.serve_forever, name="gate", daemon=True)
    thread.start()
    _log.info(
        "ready",
        extra={
            "address": f"{'https' if tls else 'http'}://{args.host}:{server.server_address[1]}",
            "require_auth": args.require_auth,
            "pipelines": [f"{p.application}/{p.name}" for p in pipelines],
            "pid": os.getpid(),
        },
    )
    stop.wait()
    server.shutdown()
    server.server_close()
    _log.info("stopped")
    return 0
