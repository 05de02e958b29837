"""Moving a tag with the Docker Registry HTTP API v2, which Artifact Registry and the CNCF Distribution registry
both speak: read the manifest by digest, put it back under the tag. No image bytes move.

Authentication follows the registry's challenge (https://distribution.github.io/distribution/spec/auth/token/):
a 401 with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` is answered with a token fetched from the
realm. Artifact Registry issues it for the user ``oauth2accesstoken`` with an OAuth access token as password
(the function's Application Default Credentials; https://cloud.google.com/artifact-registry/docs/reference/docker-api);
a registry that does not challenge gets no credentials.

A token holds only the actions it was asked for and granted (the token spec: "the token server should return a
token with the intersection of the requested scope and the access the client has"), and a registry refuses a
write with a read token (Distribution answers 401 ``error="insufficient_scope"`` naming the scope it needs;
GCR and Artifact Registry refuse it too: containerd#1318, skaffold#1164). So tokens are kept per host and scope,
a write asks for ``pull,push`` up front, and a 401/403 that names a scope after a token was sent is answered once
with a new token for that scope (a re-challenge), not retried with the same token.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from cd4ml.errors import PermanentError, RetryableError

#: Every manifest media type a registry may hold an image under (OCI and Docker, single and multi-platform).
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
TIMEOUT = (5.0, 30.0)
#: The share of a function's timeout (catalog.yaml) its registry calls may spend: every call's timeouts are capped
#: by what is left, so the act (the alias move, its check) ends long before the platform stops the function and
#: its lease's heartbeat (unbounded, the move's up to nine calls could take 9 × 35 s against promote's 120 s).
BUDGET_SHARE = 0.4


def budget(timeout_seconds: float) -> float:
    """What a function with ``timeout_seconds`` may spend in registry calls."""
    return timeout_seconds * BUDGET_SHARE


PULL = "pull"
PULL_PUSH = "pull,push"
#: The token spec: "expires_in … If omitted, a default of 60 seconds should be assumed."
DEFAULT_TOKEN_SECONDS = 60.0
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Challenge:
    """A Bearer ``WWW-Authenticate`` challenge: where to get a token, for which service, and the scope it names."""

    realm: str
    service: str
    scope: str

    @classmethod
    def of(cls, response: requests.Response) -> Challenge | None:
        """The challenge of a 401 (or a 403 that carries one); None for anything else."""
        header = response.headers.get("WWW-Authenticate", "")
        if response.status_code not in (401, 403) or not header.lower().startswith("bearer"):
            return None
        fields = dict(_CHALLENGE.findall(header))
        if not fields.get("realm"):
            return None
        return cls(realm=fields["realm"], service=fields.get("service", ""), scope=fields.get("scope", ""))


def _merge(scope: str, named: str) -> str:
    """``repository:PATH:ACTIONS`` with the actions of both (a challenge may name more than was asked for)."""
    kind, path, actions = scope.rsplit(":", 2) if scope.count(":") >= 2 else (scope, "", "")
    wanted = actions.split(",")
    for item in named.split():
        named_kind, _, rest = item.partition(":")
        named_path, _, named_actions = rest.rpartition(":")
        if named_kind == kind and named_path == path:
            wanted += [a for a in named_actions.split(",") if a and a not in wanted]
    return f"{kind}:{path}:{','.join(sorted(wanted))}"


@dataclass(frozen=True)
class Repository:
    """``HOST/PATH`` of a repository and the API base that serves it (``https://HOST`` unless told otherwise)."""

    host: str
    path: str
    api: str

    @classmethod
    def of(cls, reference: str, api: str = "") -> Repository:
        """The repository of ``HOST/PATH[:TAG|@DIGEST]``."""
        name = reference.split("@", 1)[0]
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name = name.rsplit(":", 1)[0]
        host, _, path = name.partition("/")
        if not path:
            raise PermanentError(f"{reference[:200]!r} names no repository (HOST/PATH)")
        return cls(host=host, path=path, api=(api or f"https://{host}").rstrip("/"))


class RegistryClient:
    """Reads and writes manifests; 5xx and connection trouble are retryable, 4xx but auth are permanent."""

    def __init__(
        self,
        token: Callable[[], str] | None = None,
        session: requests.Session | None = None,
        budget_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token
        self._http = session or requests.Session()
        self._clock = clock
        self._deadline = None if budget_seconds is None else clock() + budget_seconds
        self._realms: dict[str, Challenge] = {}  # host → the realm and service its last challenge named
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (host, scope) → (token, expiry)

    def digest(self, repo: Repository, tag: str) -> str | None:
        """The digest ``tag`` points at; None when there is no such tag."""
        response = self._request("HEAD", repo, f"/manifests/{tag}", PULL, headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            return None
        self._check(response, f"HEAD {repo.path}:{tag}")
        return response.headers.get("Docker-Content-Digest")

    def tag(self, repo: Repository, digest: str, tag: str) -> None:
        """Point ``tag`` at the manifest ``digest``, as ``docker tag`` + ``docker push`` would."""
        # A read-write token from the start: the PUT must not meet a read token cached by the GET.
        got = self._request(
            "GET", repo, f"/manifests/{digest}", PULL_PUSH, headers={"Accept": ", ".join(MANIFEST_TYPES)}
        )
        self._check(got, f"GET {repo.path}@{digest}")
        media_type = got.headers.get("Content-Type", MANIFEST_TYPES[0]).split(";")[0]
        put = self._request(
            "PUT", repo, f"/manifests/{tag}", PULL_PUSH, data=got.content, headers={"Content-Type": media_type}
        )
        self._check(put, f"PUT {repo.path}:{tag}")

    def _request(self, method: str, repo: Repository, path: str, actions: str, **kwargs: Any) -> requests.Response:
        """One API call with a token for ``repository:PATH:actions``; a challenge is answered once."""
        url = f"{repo.api}/v2/{repo.path}{path}"
        scope = f"repository:{repo.path}:{actions}"
        headers = dict(kwargs.pop("headers", {}))
        try:
            token = self._cached(repo.host, scope)
            if token is None and repo.host in self._realms:
                token = self._fetch_token(repo.host, self._realms[repo.host], scope)  # ask before acting
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            response = self._http.request(method, url, headers=headers, timeout=self._timeout(), **kwargs)
            challenge = Challenge.of(response)
            # Unauthenticated: any Bearer challenge. With a token: only a challenge naming a scope (insufficient
            # scope, or an expired token) earns a new one; a bare 401/403 is a grant still missing: retried later.
            if challenge is not None and ("Authorization" not in headers or challenge.scope):
                self._realms[repo.host] = challenge
                self._tokens.pop((repo.host, scope), None)
                token = self._fetch_token(repo.host, challenge, _merge(scope, challenge.scope))
                headers["Authorization"] = f"Bearer {token}"
                response = self._http.request(method, url, headers=headers, timeout=self._timeout(), **kwargs)
        except requests.RequestException as trouble:
            raise RetryableError(f"registry {repo.api} unreachable: {type(trouble).__name__}") from trouble
        return response

    def _timeout(self) -> tuple[float, float]:
        """TIMEOUT, both together capped by what is left of the client's budget; RetryableError once it is spent."""
        if self._deadline is None:
            return TIMEOUT
        left = self._deadline - self._clock()
        if left <= 0.5:
            raise RetryableError("registry calls ran out of their time budget; the delivery is retried")
        connect = min(TIMEOUT[0], left / 4)
        return (connect, min(TIMEOUT[1], left - connect))

    def _cached(self, host: str, scope: str) -> str | None:
        token, expiry = self._tokens.get((host, scope), ("", 0.0))
        return token if token and time.monotonic() < expiry else None

    def _fetch_token(self, host: str, challenge: Challenge, scope: str) -> str:
        """A token for ``scope`` from the challenge's realm, kept for the scope it was asked for."""
        auth = ("oauth2accesstoken", self._token()) if self._token else None
        params = {"service": challenge.service, "scope": scope} if challenge.service else {"scope": scope}
        try:
            response = self._http.get(challenge.realm, params=params, auth=auth, timeout=self._timeout())
        except requests.RequestException as trouble:
            raise RetryableError(
                f"registry token service {challenge.realm} unreachable: {type(trouble).__name__}"
            ) from trouble
        self._check(response, f"token for {scope}")
        try:
            body = response.json()
            token = str(body.get("token") or body.get("access_token") or "")
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError) as error:
            raise RetryableError(f"registry token service {challenge.realm} answered no token: {error}") from error
        if not token:
            raise RetryableError(f"registry token service {challenge.realm} answered no token for {scope}")
        # Spent a little early: a token that expires between the check and the call only costs a re-challenge.
        self._tokens[(host, scope)] = (token, time.monotonic() + max(lifetime - 10.0, 1.0))
        return token

    @staticmethod
    def _check(response: requests.Response, what: str) -> None:
        if response.status_code < 400:
            return
        # The reason phrase too: a HEAD's answer has no body, and "HTTP 503" alone does not say the registry is down.
        detail = f"registry refused {what}: HTTP {response.status_code} {response.reason} {response.text[:200]}"
        if response.status_code >= 500 or response.status_code in (401, 403, 429):
            raise RetryableError(detail)  # auth can be a grant still propagating; 5xx and 429 pass
        raise PermanentError(detail)


def adc_token() -> str:
    """An OAuth access token of Application Default Credentials (the function's service account, from the
    metadata server); no credentials or a failed refresh is retryable, named as such."""
    import google.auth
    import google.auth.exceptions
    import google.auth.transport.requests

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except google.auth.exceptions.GoogleAuthError as error:
        raise RetryableError(f"no access token for the registry's token exchange: {error}") from error
    return str(credentials.token)
