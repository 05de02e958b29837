"""cd4ml.registry's token handling against a scripted registry: which scope it asks for, when it asks again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cd4ml import registry
from cd4ml.errors import RetryableError

HOST = "us-docker.pkg.dev"
REALM = f"https://{HOST}/v2/token"
DIGEST = "sha256:" + "c" * 64


def _response(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    response._content = body
    return response


def _challenge(scope: str, status: int = 401, error: str = "") -> requests.Response:
    header = f'Bearer realm="{REALM}",service="{HOST}",scope="{scope}"' + (f',error="{error}"' if error else "")
    return _response(status, {"WWW-Authenticate": header})


class Scripted(requests.Session):
    """Answers registry calls from a script; the token realm gives a token naming the scope asked for."""

    def __init__(self, answers: Iterator[requests.Response]) -> None:
        super().__init__()
        self.answers = answers
        self.calls: list[tuple[str, str, str]] = []  # method, path, Authorization
        self.scopes: list[str] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        headers = kwargs.get("headers") or {}
        self.calls.append((str(method), str(url).split("/v2/", 1)[1], str(headers.get("Authorization", ""))))
        return next(self.answers)

    def get(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        assert url == REALM and kwargs["auth"] == ("oauth2accesstoken", "ya29.access")
        scope = kwargs["params"]["scope"]
        self.scopes.append(scope)
        return _response(200, {"Content-Type": "application/json"}, f'{{"token": "token-for-{scope}"}}'.encode())


def test_a_403_that_names_a_scope_after_a_token_was_sent_is_answered_with_a_token_for_that_scope() -> None:
    """Artifact Registry may refuse a write with 403 and a challenge: the client asks the realm again, once."""
    repo = registry.Repository.of(f"{HOST}/p/cd4ml-digits/digits@{DIGEST}")
    manifest = _response(200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, b"{}")
    session = Scripted(
        iter(
            [
                _challenge("repository:p/cd4ml-digits/digits:pull"),  # GET, unauthenticated
                manifest,  # GET with the pull,push token
                _challenge("repository:p/cd4ml-digits/digits:pull,push,delete", status=403, error="insufficient_scope"),
                _response(201),  # PUT with the re-challenged token
            ]
        )
    )
    client = registry.RegistryClient(token=lambda: "ya29.access", session=session)

    client.tag(repo, DIGEST, "champion")

    assert session.scopes == [
        "repository:p/cd4ml-digits/digits:pull,push",
        "repository:p/cd4ml-digits/digits:delete,pull,push",
    ]
    assert [c[:2] for c in session.calls] == [
        ("GET", f"p/cd4ml-digits/digits/manifests/{DIGEST}"),
        ("GET", f"p/cd4ml-digits/digits/manifests/{DIGEST}"),
        ("PUT", "p/cd4ml-digits/digits/manifests/champion"),
        ("PUT", "p/cd4ml-digits/digits/manifests/champion"),
    ]
    assert session.calls[-1][2] == "Bearer token-for-repository:p/cd4ml-digits/digits:delete,pull,push"


def test_a_bare_refusal_after_a_token_was_sent_is_retried_later_not_rechallenged() -> None:
    """A 403 without a challenge is a grant not there (or not yet propagated): one token request, then retryable."""
    repo = registry.Repository.of(f"{HOST}/p/cd4ml-digits/digits@{DIGEST}")
    session = Scripted(iter([_challenge("repository:p/cd4ml-digits/digits:pull"), _response(403, body=b"denied")]))
    client = registry.RegistryClient(token=lambda: "ya29.access", session=session)
    with pytest.raises(RetryableError, match="HTTP 403"):
        client.tag(repo, DIGEST, "champion")
    assert session.scopes == ["repository:p/cd4ml-digits/digits:pull,push"]
