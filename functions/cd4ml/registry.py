"""Moving a tag with the Docker Registry HTTP API v2, which Artifact Registry and the CNCF Distribution registry
both speak: read the manifest by digest, put it back under the tag. No image bytes move.

Authentication follows the registry's challenge (https://distribution.github.io/distribution/spec/auth/token/):
a 401 with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` is answered with a token fetched from the
realm. Artifact Registry issues it for the user ``oauth2accesstoken`` with an OAuth access token as password
(the function's Application Default Credentials); a registry that does not challenge gets no credentials.
"""

from __future__ import annotations

import re
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
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


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

    def __init__(self, token: Callable[[], str] | None = None, session: requests.Session | None = None) -> None:
        self._token = token
        self._http = session or requests.Session()
        self._bearer: dict[str, str] = {}

    def digest(self, repo: Repository, tag: str) -> str | None:
        """The digest ``tag`` points at; None when there is no such tag."""
        response = self._request("HEAD", repo, f"/manifests/{tag}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response.status_code == 404:
            return None
        self._check(response, f"HEAD {repo.path}:{tag}")
        return response.headers.get("Docker-Content-Digest")

    def tag(self, repo: Repository, digest: str, tag: str) -> None:
        """Point ``tag`` at the manifest ``digest``, as ``docker tag`` + ``docker push`` would."""
        got = self._request("GET", repo, f"/manifests/{digest}", headers={"Accept": ", ".join(MANIFEST_TYPES)})
        self._check(got, f"GET {repo.path}@{digest}")
        media_type = got.headers.get("Content-Type", MANIFEST_TYPES[0]).split(";")[0]
        put = self._request("PUT", repo, f"/manifests/{tag}", data=got.content, headers={"Content-Type": media_type})
        self._check(put, f"PUT {repo.path}:{tag}")

    def _request(self, method: str, repo: Repository, path: str, **kwargs: Any) -> requests.Response:
        url = f"{repo.api}/v2/{repo.path}{path}"
        headers = dict(kwargs.pop("headers", {}))
        if repo.host in self._bearer:
            headers["Authorization"] = f"Bearer {self._bearer[repo.host]}"
        try:
            response = self._http.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
            if response.status_code == 401 and "Authorization" not in headers:
                challenge = response.headers.get("WWW-Authenticate", "")
                if challenge.lower().startswith("bearer"):
                    self._bearer[repo.host] = self._fetch_token(challenge)
                    headers["Authorization"] = f"Bearer {self._bearer[repo.host]}"
                    response = self._http.request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as trouble:
            raise RetryableError(f"registry {repo.api} unreachable: {type(trouble).__name__}") from trouble
        return response

    def _fetch_token(self, challenge: str) -> str:
        fields = dict(_CHALLENGE.findall(challenge))
        auth = ("oauth2accesstoken", self._token()) if self._token else None
        params = {k: v for k, v in fields.items() if k in ("service", "scope")}
        try:
            response = self._http.get(fields.get("realm", ""), params=params, auth=auth, timeout=TIMEOUT)
        except requests.RequestException as trouble:
            raise RetryableError(f"registry token service unreachable: {type(trouble).__name__}") from trouble
        self._check(response, "token")
        body = response.json()
        return str(body.get("token") or body.get("access_token") or "")

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
    """An OAuth access token of Application Default Credentials (the function's service account)."""
    import google.auth
    import google.auth.transport.requests

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    return str(credentials.token)
