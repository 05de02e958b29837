"""A stand-in for Google's ID-token issuer: nobody here has Google's keys, so the local stack signs with its own.

``GET /oauth2/v1/certs`` answers as https://www.googleapis.com/oauth2/v1/certs does: ``{key id: x509 certificate
PEM}``, the format google-auth's ``google.oauth2.id_token.verify_token`` reads. The functions verify tokens exactly as
in production, only ``CD4ML_TOKEN_CERTS_URL`` points here. ``POST /token`` with ``{"email", "audience"}`` mints an
RS256 ID token with Google's claims (``iss`` https://accounts.google.com, ``aud``, ``azp``, ``sub``, ``email``,
``email_verified``, ``iat``, ``exp`` one hour later, ``kid`` in the header), as the metadata server
(``identity?audience=URL&format=full``) or ``gcloud auth print-identity-token`` would for that account. What differs:
Google signs only for an account that signed in; here whoever can reach the port gets a token for any email (the
OS login stands for Google's sign-in: ``cd4ml approve`` asks for ``OS_USER@localhost``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ISSUER = "https://accounts.google.com"
LIFETIME_SECONDS = 3600


class Issuer:
    """One RSA key pair and its self-signed certificate, kept in the state directory across restarts."""

    def __init__(self, state: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        state.mkdir(parents=True, exist_ok=True)
        key_file, cert_file = state / "key.pem", state / "cert.pem"
        if not key_file.exists() or not cert_file.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cd4ml local token issuer")])
            start = datetime.now(UTC) - timedelta(minutes=5)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + timedelta(days=30))
                .sign(key, hashes.SHA256())
            )
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            key_file.chmod(0o600)
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.private_pem = key_file.read_text()
        self.cert_pem = cert_file.read_text()
        self.key_id = hashlib.sha1(self.cert_pem.encode()).hexdigest()

    def certs(self) -> dict[str, str]:
        return {self.key_id: self.cert_pem}

    def mint(self, email: str, audience: str, lifetime: int = LIFETIME_SECONDS) -> str:
        """An ID token for ``email`` whose audience is ``audience``, signed with this issuer's key."""
        return sign(self.private_pem, self.key_id, claims(email, audience, lifetime))


def claims(email: str, audience: str, lifetime: int = LIFETIME_SECONDS, issued: int | None = None) -> dict[str, Any]:
    """The claims Google puts in an ID token for an account (``sub`` is Google's numeric id; here the email's hash)."""
    issued = int(time.time()) if issued is None else issued
    return {
        "iss": ISSUER,
        "aud": audience,
        "azp": audience,
        "sub": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
        "email": email,
        "email_verified": True,
        "iat": issued,
        "exp": issued + lifetime,
    }


def sign(private_pem: str, key_id: str, payload: dict[str, Any]) -> str:
    """An RS256 JWT of ``payload`` with ``kid`` in its header (google-auth's own encoder)."""
    from google.auth import crypt, jwt

    signer = crypt.RSASigner.from_string(private_pem, key_id)  # type: ignore[no-untyped-call]
    token: bytes = jwt.encode(signer, payload)  # type: ignore[no-untyped-call]
    return token.decode()


def handler(issuer: Issuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/oauth2/v1/certs":
                self._answer(200, issuer.certs())
            elif self.path == "/health":
                self._answer(200, {"ok": True})
            else:
                self._answer(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if self.path != "/token":
                self._answer(404, {"error": "not_found"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                email, audience = str(body["email"]), str(body["audience"])
            except (ValueError, KeyError, TypeError):
                self._answer(400, {"error": 'expected {"email": ..., "audience": ...}'})
                return
            if "@" not in email or not audience:
                self._answer(400, {"error": "email must be an address and audience non-empty"})
                return
            self._answer(200, {"id_token": issuer.mint(email, audience)})

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    ThreadingHTTPServer((args.host, args.port), handler(Issuer(args.state_dir))).serve_forever()


if __name__ == "__main__":
    main()
