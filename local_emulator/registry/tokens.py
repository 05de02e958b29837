"""The local registry's token service: Distribution's ``auth: token`` realm, granting scopes from the IAM bindings.

Distribution (``auth.token``: realm, service, issuer, rootcertbundle) challenges every API call without a token
that holds the actions it needs, and verifies the token as a JWT signed by a key whose certificate is in the
bundle (``registry/auth/token``: issuer, audience = service, exp/nbf, an ``x5c`` chain up to the bundle). This
service answers the realm as Artifact Registry's does for a service account: ``GET /v2/token?service=…&scope=…``
with Basic auth ``oauth2accesstoken:ACCESS_TOKEN`` (https://cloud.google.com/artifact-registry/docs/docker/authentication#token),
the access token being one of the local metadata servers' (``local_emulator.iam.access_tokens``). Per the token spec
(https://distribution.github.io/distribution/spec/auth/token/), the token holds "the intersection of the requested
scope and the access the client has": each requested action that the identity's Artifact Registry roles grant on
that repository (``local_emulator.iam.policy``: the same iam_bindings.yaml as Terraform), and no other. A missing or unknown access
token is refused 401, as Artifact Registry refuses a token exchange it cannot authenticate.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from local_emulator.iam.access_tokens import Minter
from local_emulator.iam.policy import Policy

ISSUER = "cd4ml-local-token-service"
TOKEN_PATH = "/v2/token"
TOKEN_SECONDS = 300
_ALL_ACTIONS = ("pull", "push", "delete")

_log = logging.getLogger("registry.tokens")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    """An RSA key and its self-signed certificate: the certificate is Distribution's ``rootcertbundle``."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def write_bundle(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def token(self, service: str, subject: str, access: list[dict[str, Any]], lifetime: int = TOKEN_SECONDS) -> str:
        """A JWT (RS256, ``x5c`` = this certificate) as Distribution's token verifier expects it."""
        chain = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        header = {"typ": "JWT", "alg": "RS256", "x5c": chain}
        issued = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": service,
            "exp": issued + lifetime,
            "nbf": issued - 1,
            "iat": issued,
            "jti": secrets.token_hex(12),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


@dataclass(frozen=True)
class Scope:
    """``repository:NAME:ACTIONS`` of a token request."""

    kind: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            return None
        return cls(kind, name, tuple(a for a in actions.split(",") if a))


def granted(policy: Policy, identity: str, scopes: list[Scope]) -> list[dict[str, Any]]:
    """The token's ``access``: per requested repository, the requested actions the identity's roles allow."""
    access = []
    for scope in scopes:
        if scope.kind != "repository":
            continue  # registry:catalog:* and the like: Artifact Registry grants them through IAM, not here
        actions = [a for a in scope.actions if a in _ALL_ACTIONS and policy.allows_image(identity, a, scope.name)]
        access.append({"type": scope.kind, "name": scope.name, "actions": actions})
    return access


class TokenService(ThreadingHTTPServer):
    """``GET /v2/token``: who asks (their access token), what they ask (scopes), what they get (the grants)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], signer: Signer, minter: Minter, policy: Policy, service: str) -> None:
        super().__init__(address, _Handler)
        self.signer = signer
        self.minter = minter
        self.policy = policy
        self.service = service

    @property
    def realm(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{TOKEN_PATH}"

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="registry-tokens", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: TokenService

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path != TOKEN_PATH:
            self._json(404, {"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]})
            return
        identity = self._identity()
        if identity is None:
            self._json(
                401,
                {
                    "errors": [
                        {
                            "code": "UNAUTHORIZED",
                            "message": "authentication failed: send Basic auth with the user oauth2accesstoken and "
                            "an OAuth access token as the password",
                        }
                    ]
                },
            )
            return
        query = urllib.parse.parse_qs(url.query)
        scopes = [s for text in query.get("scope", []) for item in text.split() if (s := Scope.parse(item))]
        access = granted(self.server.policy, identity, scopes)
        token = self.server.signer.token(self.server.service, identity, access)
        _log.info("token issued", extra={"identity": identity, "access": access})
        now = datetime.datetime.now(datetime.UTC).isoformat()
        self._json(200, {"token": token, "access_token": token, "expires_in": TOKEN_SECONDS, "issued_at": now})

    def _identity(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if user != "oauth2accesstoken":
            return None
        return self.server.minter.identity(password)

    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return
