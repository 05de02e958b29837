"""Who made a request, from a Google-signed ID token (``Authorization: Bearer ID_TOKEN``), never from what it says.

Verified with google-auth (``google.oauth2.id_token.verify_token``: the signature against the issuer's public
certificates, ``exp`` and ``iat``, and ``aud`` against the accepted audiences), then, as ``verify_oauth2_token``
does, the issuer (``accounts.google.com`` or ``https://accounts.google.com``), and the ``email`` claim with
``email_verified``. The certificates come from ``CD4ML_TOKEN_CERTS_URL``, Google's
(https://www.googleapis.com/oauth2/v1/certs, ``{key id: x509 PEM}``) unless the local stack serves its stand-in's.

Audiences (``CD4ML_DECISION_AUDIENCES``): a service account's token is minted for the endpoint's URL (the metadata
server's ``identity?audience=URL&format=full``, ``gcloud auth print-identity-token --audiences=URL`` or
``--impersonate-service-account``), which is the audience Cloud Run's invoker check expects too
(https://cloud.google.com/run/docs/configuring/custom-audiences). A user's ``gcloud auth print-identity-token`` carries
gcloud's OAuth client id (32555940559.apps.googleusercontent.com) instead, the token Cloud Run accepts from
developers (https://cloud.google.com/run/docs/authenticating/developers); a deployment may accept it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import google.auth.transport

#: Google's ID-token certificates (google.oauth2.id_token._GOOGLE_OAUTH2_CERTS_URL) and issuers (_GOOGLE_ISSUERS).
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")
#: Google's own service accounts end so; any other verified email is a user's.
SERVICE_ACCOUNT_DOMAIN = ".gserviceaccount.com"
#: Seconds of clock skew tolerated on ``iat`` and ``exp`` (google-auth's default is 0).
CLOCK_SKEW_SECONDS = 10


class Unverified(Exception):
    """The request carries no token this endpoint accepts; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """The verified caller as an IAM principal (``user:EMAIL`` or ``serviceAccount:EMAIL``), and its token's expiry."""

    member: str
    email: str
    expires: int


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; Unverified naming the problem otherwise."""
    if not authorization:
        raise Unverified("no Authorization header: send `Authorization: Bearer ID_TOKEN` (cd4ml approve does)")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unverified("the Authorization header is not `Bearer ID_TOKEN`")
    return token.strip()


def verify(
    token: str,
    audiences: Sequence[str],
    certs_url: str = GOOGLE_CERTS_URL,
    request: google.auth.transport.Request | None = None,
) -> Principal:
    """The principal a Google-signed ID token names, once its signature, expiry, audience, issuer and verified email
    hold; Unverified with the reason otherwise."""
    from google.auth import exceptions
    from google.oauth2 import id_token

    if not audiences:
        raise Unverified("this endpoint accepts no audience (CD4ML_DECISION_AUDIENCES is empty)")
    if request is None:
        import google.auth.transport.requests

        request = google.auth.transport.requests.Request()
    try:
        claims: Mapping[str, Any] = id_token.verify_token(
            token, request, audience=list(audiences), certs_url=certs_url, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
        )
    except exceptions.TransportError:
        raise  # the certificates could not be fetched: a retryable outage, not the caller's fault
    except (ValueError, exceptions.GoogleAuthError) as error:
        raise Unverified(f"the ID token is not valid here: {error}") from error
    if claims.get("iss") not in GOOGLE_ISSUERS:
        raise Unverified(f"the ID token's issuer {claims.get('iss')!r} is not Google's")
    email = str(claims.get("email") or "")
    if not email:
        raise Unverified(
            "the ID token names no email: mint it with the email claim (metadata server format=full, "
            "`gcloud auth print-identity-token --include-email` for an impersonated service account)"
        )
    if claims.get("email_verified") is not True and str(claims.get("email_verified")).lower() != "true":
        raise Unverified(f"the ID token's email {email} is not verified")
    kind = "serviceAccount" if email.endswith(SERVICE_ACCOUNT_DOMAIN) else "user"
    return Principal(member=f"{kind}:{email}", email=email, expires=int(claims.get("exp", 0)))
