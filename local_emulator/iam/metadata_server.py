"""A Compute Engine metadata server per identity: where a function's Application Default Credentials come from.

A Cloud Run function asks ``http://metadata.google.internal/computeMetadata/v1/`` for its service account's access
token (header ``Metadata-Flavor: Google``, else 403); google-auth finds a server at ``GCE_METADATA_HOST`` /
``GCE_METADATA_IP`` (google/auth/compute_engine/_metadata.py: a ping of the IP root must answer
``Metadata-Flavor: Google``, then ``instance/service-accounts/default/?recursive=true`` and ``…/token``). Each
identity's port answers with that identity's email and tokens (``access_tokens``), so the functions' unchanged
``google.auth.default()`` gets exactly the identity the IAM proxy gives their other calls.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from local_emulator.iam.access_tokens import LIFETIME_SECONDS, Minter

_ROOT = "/computeMetadata/v1/"
_ACCOUNT = _ROOT + "instance/service-accounts/default/"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]


class MetadataServer(ThreadingHTTPServer):
    """The metadata of one identity: its email, its project, its access tokens."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], identity: str, email: str, project: str, minter: Minter) -> None:
        super().__init__(address, _Handler)
        self.identity = identity
        self.email = email
        self.project = project
        self.minter = minter

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name=f"metadata-{self.identity}", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: MetadataServer

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/":
            self._answer(200, "text/plain", b"")  # google-auth's ping: only the header matters
            return
        if self.headers.get("Metadata-Flavor") != "Google":
            self._answer(403, "text/plain", b"Missing required header: Metadata-Flavor: Google\n")
            return
        server = self.server
        if path == _ROOT + "project/project-id":
            self._answer(200, "application/text", server.project.encode())
        elif path in (_ACCOUNT, _ACCOUNT.rstrip("/")):
            body = {"aliases": ["default"], "email": server.email, "scopes": SCOPES}
            self._answer(200, "application/json", json.dumps(body).encode())
        elif path == _ACCOUNT + "email":
            self._answer(200, "application/text", server.email.encode())
        elif path == _ACCOUNT + "token":
            token = {
                "access_token": server.minter.mint(server.identity),
                "expires_in": LIFETIME_SECONDS,
                "token_type": "Bearer",
            }
            self._answer(200, "application/json", json.dumps(token).encode())
        else:
            self._answer(404, "text/plain", b"Not Found\n")

    def _answer(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return
