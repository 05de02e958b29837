"""How cd4ml authenticates to Spinnaker Gate (``CD4ML_GATE_AUTH``), in a mode Spinnaker documents for service callers.

Gate lets anyone ``POST /webhooks/**`` but authenticates every other call once auth or Fiat is on (gate-core
``AuthConfig``: ``antMatchers("/**").authenticated()``), and Orca's ``GET /pipelines/{id}`` needs READ on the
application. So the execution search and reads carry credentials; the webhook carries them too (harmless for Gate,
needed behind IAP, and it lets an operator set ``security.webhooks.default-auth-enabled``). Modes:

- ``none``: a Gate without authentication.
- ``x509:SECRET``: an X.509 client certificate (gate-x509 ``X509Config``: the certificate's CN, or its email
  SAN, is the user; its roles come from the certificate's role OID). SECRET (``projects/P/secrets/S/versions/V``
  or ``file:PATH``) holds the PEM certificate followed by its private key.
- ``iap:AUDIENCE``: Gate behind Identity-Aware Proxy (gate-iap ``IapAuthenticationFilter`` reads the JWT IAP adds):
  a Google-signed ID token of the function's service account for AUDIENCE (the IAP OAuth client id), sent as
  ``Authorization: Bearer``.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from cd4ml import secrets
from cd4ml.errors import PermanentError

MODES = ("none", "x509", "iap")


@dataclass(frozen=True)
class GateCredentials:
    """What every Gate request carries: a client certificate file, headers, or nothing."""

    mode: str = "none"
    cert_file: str = ""
    headers: dict[str, str] = field(default_factory=dict, hash=False)

    def request_options(self) -> dict[str, Any]:
        """The keyword arguments ``requests`` takes for these credentials."""
        options: dict[str, Any] = {}
        if self.cert_file:
            options["cert"] = self.cert_file
        if self.headers:
            options["headers"] = dict(self.headers)
        return options


def parse(setting: str) -> tuple[str, str]:
    """(mode, argument) of a ``CD4ML_GATE_AUTH`` value; PermanentError naming the accepted forms."""
    mode, _, argument = setting.strip().partition(":")
    mode = mode or "none"
    if mode not in MODES or (mode == "none") != (not argument):
        raise PermanentError(
            f"CD4ML_GATE_AUTH {setting!r} is not one of: none, x509:SECRET (PEM certificate and key), iap:AUDIENCE"
        )
    return mode, argument


def load(setting: str) -> GateCredentials:
    """The credentials ``setting`` names, read once per process (a certificate) or fetched (an ID token)."""
    mode, argument = parse(setting)
    if mode == "x509":
        return GateCredentials("x509", cert_file=_certificate_file(argument))
    if mode == "iap":
        return GateCredentials("iap", headers={"Authorization": f"Bearer {_id_token(argument)}"})
    return GateCredentials()


@functools.cache
def _certificate_file(reference: str) -> str:
    """The certificate and key in a private file (``requests`` takes a path); never logged."""
    pem = secrets.read(reference, setting="CD4ML_GATE_AUTH")
    if "CERTIFICATE-----" not in pem or "PRIVATE KEY-----" not in pem:
        raise PermanentError(
            "the Gate client certificate secret must hold a PEM certificate followed by its private key"
        )
    handle, path = tempfile.mkstemp(prefix="cd4ml-gate-", suffix=".pem")
    with os.fdopen(handle, "w") as file:  # mkstemp's file is 0600
        file.write(pem + "\n")
    return path


def _id_token(audience: str) -> str:
    """A Google-signed ID token for ``audience`` (the metadata server on Cloud Functions; google-auth caches none)."""
    import google.auth.transport.requests
    from google.auth import exceptions
    from google.oauth2 import id_token

    from cd4ml.errors import RetryableError

    try:
        return str(id_token.fetch_id_token(google.auth.transport.requests.Request(), audience))  # type: ignore[no-untyped-call]
    except exceptions.GoogleAuthError as trouble:
        raise RetryableError(f"could not get an ID token for Gate's IAP audience {audience}: {trouble}") from trouble
