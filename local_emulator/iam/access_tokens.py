"""OAuth access tokens of the local stack's identities: minted by the local metadata servers, checked by the stand-ins.

In production a function's Application Default Credentials come from the metadata server, which answers
``instance/service-accounts/default/token`` with an access token of the function's service account; Artifact
Registry's token endpoint takes that token as the password of the user ``oauth2accesstoken``
(https://cloud.google.com/artifact-registry/docs/docker/authentication#token). Locally each identity has its own
metadata port on the IAM proxy (``iam_proxy``), and its tokens are ``ya29.cd4ml-local.CLAIMS.MAC``: the identity
and expiry signed with a key only the stack's processes read, so a caller cannot name another identity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "ya29.cd4ml-local."
LIFETIME_SECONDS = 3599  # the metadata server's tokens live about an hour


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key(path: Path) -> Path:
    """Write a fresh signing key (owner-only) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_hex(32), encoding="utf-8")
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Minter:
    """Mints and checks the access tokens of every identity, with the key of one stack."""

    key: bytes

    @classmethod
    def from_file(cls, path: Path) -> Minter:
        return cls(path.read_text(encoding="utf-8").strip().encode())

    def mint(self, identity: str, lifetime: int = LIFETIME_SECONDS) -> str:
        """An access token of ``identity`` valid for ``lifetime`` seconds."""
        claims = _b64(json.dumps({"sub": identity, "exp": int(time.time()) + lifetime}).encode())
        return f"{PREFIX}{claims}.{self._mac(claims)}"

    def identity(self, token: str) -> str | None:
        """The identity a valid, unexpired token was minted for; None for anything else."""
        if not token.startswith(PREFIX):
            return None
        claims, _, mac = token[len(PREFIX) :].partition(".")
        if not hmac.compare_digest(mac, self._mac(claims)):
            return None
        try:
            body = json.loads(_unb64(claims))
        except ValueError:
            return None
        if not isinstance(body, dict) or int(body.get("exp", 0)) < time.time():
            return None
        return str(body.get("sub") or "") or None

    def _mac(self, claims: str) -> str:
        return _b64(hmac.new(self.key, claims.encode(), hashlib.sha256).digest())
