"""An HTTP proxy in front of the GCS emulator for one identity: each request authorized, then streamed through.

What a request needs is decided by ``access.required``; a refusal is GCS's 403 JSON error, which
google-cloud-storage raises as ``google.api_core.exceptions.Forbidden``. A resumable upload is authorized when
its session starts (as GCS does) and its Location is rewritten to this proxy, so the data goes through it too.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from local_emulator.iam.access_tokens import Minter
from local_emulator.iam.policy import ADMIN, Policy
from local_emulator.storage.access import Access, Need, denial, required
from local_emulator.storage.notifications import Notifications, is_config_path

CHUNK = 1024 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class StorageProxy(ThreadingHTTPServer):
    """One listening port for one identity."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        upstream: str,
        identity: str,
        policy: Policy,
        notifications: Notifications | None = None,
        minter: Minter | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        # Cloud Storage authorizes the caller its access token names: a valid token of the stack's identities decides
        # over the port's identity (how the Cloud Build stand-in fetches a source as the build's own account).
        self.minter = minter
        self.notifications = notifications  # Cloud Storage's Pub/Sub notifications, shared by every identity
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.identity = identity
        self.policy = policy
        self.sessions: set[str] = set()  # resumable upload ids this identity was allowed to start
        self.lock = threading.Lock()

    def caller(self, authorization: str) -> str:
        """The identity a request acts as: its bearer token's, else the port's."""
        scheme, _, token = authorization.partition(" ")
        if self.minter is not None and scheme.lower() == "bearer":
            return self.minter.identity(token.strip()) or self.identity
        return self.identity

    def refusal(self, access: Access, identity: str | None = None) -> Need | str | None:
        """The first need the policy does not grant ``identity`` (the port's by default; or why the request cannot be
        judged), or None."""
        identity = identity or self.identity
        if identity == ADMIN:
            return None
        if access.unsupported:
            return access.unsupported
        if access.resumable_session is not None:
            with self.lock:
                known = access.resumable_session in self.sessions
            return None if known else "a resumable upload this identity did not start"
        for need in access.needs:
            if not self._allows(need, identity):
                return need
            if (
                need.overwrite_check
                and not self._allows(Need("storage.objects.delete", need.bucket, need.name), identity)
                and self._exists(need.bucket, str(need.name))
            ):
                return Need("storage.objects.delete", need.bucket, need.name)
        return None

    def _allows(self, need: Need, identity: str) -> bool:
        return self.policy.allows_object(
            identity, need.permission, need.bucket, name=need.name, list_prefix=need.list_prefix
        )

    def _exists(self, bucket: str, name: str) -> bool:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            connection.request("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}")
            response = connection.getresponse()
            response.read()
            return response.status == 200
        finally:
            connection.close()


class _Handler(BaseHTTPRequestHandler):
    server: StorageProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _proxy(self) -> None:
        body = self._body()
        path, _, query = self.path.partition("?")
        method = self.headers.get("X-HTTP-Method-Override", self.command).upper()
        if is_config_path(path) and self.server.notifications is not None:
            self._notification_configs(method, path, body)
            return
        access = required(method, path, query, body, self.headers.get("Content-Type", ""))
        caller = self.server.caller(self.headers.get("Authorization", ""))
        refusal = self.server.refusal(access, caller)
        if refusal is not None:
            self._deny(refusal, caller)
            return
        connection = http.client.HTTPConnection(*self.server.upstream, timeout=300)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "host"}
            headers["Host"] = "{}:{}".format(*self.server.upstream)
            connection.request(
                self.command, self.path, body=body if body or self.command != "GET" else None, headers=headers
            )
            response = connection.getresponse()
            if self.server.notifications is not None and method in ("POST", "PUT") and path.startswith("/upload/"):
                data = response.read()  # a finished upload answers with the object resource: small JSON
                self._relay(response, data)
                self._finalized(response.status, data)
                return
            self._relay(response)
        finally:
            connection.close()

    def _finalized(self, status: int, data: bytes) -> None:
        """A write that finalized an object: Cloud Storage's OBJECT_FINALIZE notifications (after the answer)."""
        if status not in (200, 201) or self.server.notifications is None:
            return
        try:
            resource = json.loads(data)
        except ValueError:
            return
        if isinstance(resource, dict) and resource.get("kind") == "storage#object":
            self.server.notifications.finalized(resource)

    def _notification_configs(self, method: str, path: str, body: bytes) -> None:
        """The bucket's notificationConfigs (storage.buckets.update / get): only the admin identity manages them."""
        assert self.server.notifications is not None
        if self.server.identity != ADMIN:
            self._deny(
                "notification configs (storage.buckets.update), which only the deployer manages", self.server.identity
            )
            return
        status, answer = self.server.notifications.api(method, path, body)
        data = json.dumps(answer).encode() if answer is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _relay(self, response: http.client.HTTPResponse, data: bytes | None = None) -> None:
        self.send_response(response.status, response.reason)
        host, port = self.server.server_address[:2]
        proxy = f"http://{host!s}:{port}"
        upstream = "http://{}:{}".format(*self.server.upstream)
        length = response.getheader("Content-Length")
        for key, value in response.getheaders():
            if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                continue
            if key.lower() == "location":
                value = value.replace(upstream, proxy)
                self._remember_session(value)
            self.send_header(key, value)
        if self.command == "HEAD" or response.status in (204, 304):
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            return
        if length is not None and data is None:
            self.send_header("Content-Length", length)
            self.end_headers()
            while chunk := response.read(CHUNK):
                self.wfile.write(chunk)
            return
        data = response.read() if data is None else data
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _remember_session(self, location: str) -> None:
        for value in parse_qs(location.partition("?")[2]).get("upload_id", []):
            with self.server.lock:
                self.server.sessions.add(value)

    def _deny(self, refusal: Need | str, identity: str) -> None:
        principal = self.server.policy.principal(identity)
        if isinstance(refusal, Need):
            body = denial(principal, refusal)
        else:
            message = f"{principal}: the local IAM proxy does not authorize {refusal}; GCS would check each permission."
            body = {
                "error": {
                    "code": 403,
                    "message": message,
                    "errors": [{"message": message, "domain": "global", "reason": "forbidden"}],
                }
            }
        data = json.dumps(body).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
