"""The registry's API front for the chaos session: what the functions reach as ``CD4ML_REGISTRY_API``.

Started by ``local_emulator.registry --api-port`` only when the stack runs under ``LOCAL_CHAOS_DIR``; otherwise
the functions talk to the Distribution registry directly. It forwards every Docker Registry HTTP API v2
request unchanged (method, path, body, the headers the API uses) and answers as a registry in an outage while
the chaos driver holds ``down/registry``: HTTP 503 with the registry's error body (Artifact Registry's front
end answers 503 UNAVAILABLE then; ``cd4ml.registry`` treats every 5xx as retryable). After a manifest PUT that
succeeded it calls ``faults.effect_done("registry.tag", [TAG])``, so a crash can be planned at the worst moment
of a promotion: the alias moved, the caller killed before it records that.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from local_emulator.common import faults

_REQUEST_HEADERS = ("accept", "content-type", "authorization")
_RESPONSE_HEADERS = (
    "content-type",
    "docker-content-digest",
    "location",
    "www-authenticate",
    "docker-distribution-api-version",
)


class Front(ThreadingHTTPServer):
    """Forwards to the registry at ``upstream`` (``HOST:PORT``)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], upstream: str) -> None:
        super().__init__(address, _Handler)
        self.upstream = upstream

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="registry-front", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: Front
    protocol_version = "HTTP/1.1"

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if faults.is_down("registry"):
            error = {"errors": [{"code": "UNAVAILABLE", "message": faults.OUTAGE}]}
            self._answer(503, json.dumps(error).encode(), {"Content-Type": "application/json"})
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in _REQUEST_HEADERS}
        connection = http.client.HTTPConnection(self.server.upstream, timeout=60)
        try:
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            content = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() in _RESPONSE_HEADERS}
        finally:
            connection.close()
        if self.command == "PUT" and "/manifests/" in self.path and response.status < 300:
            faults.effect_done("registry.tag", [self.path.rsplit("/manifests/", 1)[1]], self.client_address[1])
        self._answer(response.status, content, kept)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def _answer(self, code: int, content: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if content:
            self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        return
