"""``cd4ml approve|reject RUN --reason …``: send a person's decision to the decision endpoint, proven by an ID token.

The endpoint (``CD4ML_DECISION_URL``, Terraform's output ``decision_url``) takes the decider from the token's verified
email, never from the request: the token is sent as ``Authorization: Bearer`` and kept nowhere. Where it comes from:
- the local stack: its token issuer stand-in, for ``OS_USER@localhost`` (``CD4ML_LOCAL_TOKEN_ISSUER``);
- a service account (a key file, impersonated credentials, or the metadata server): google-auth's
  ``google.oauth2.id_token.fetch_id_token`` with the endpoint's URL as audience;
- a user: ``gcloud auth print-identity-token`` (its audience is gcloud's OAuth client id; a deployment accepts it
  through ``decision_user_audiences``).

Also: the one-line note ``cd4ml model check|push`` prints when a manifest's approval block is not the deployed policy.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from cd4ml.approval_policy import Policy, difference
from cd4ml.errors import Cd4mlError, InvalidSettings
from cd4ml.manifest import Manifest
from cd4ml.settings import Settings

#: Set by `cd4ml local env` only: the local token issuer stand-in's base URL.
LOCAL_TOKEN_ISSUER = "CD4ML_LOCAL_TOKEN_ISSUER"


def local_email() -> str:
    """Who the caller is on the local stack, whose stand-ins have no accounts: the OS user at localhost."""
    return f"{getpass.getuser()}@localhost"


def id_token(audience: str, env: Mapping[str, str] | None = None) -> str:
    """An ID token for the caller whose audience is ``audience`` (see the module docstring for where it comes from)."""
    issuer = (os.environ if env is None else env).get(LOCAL_TOKEN_ISSUER, "")
    if issuer:
        asked = urllib.request.Request(
            f"{issuer}/token",
            data=json.dumps({"email": local_email(), "audience": audience}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(asked, timeout=10) as response:
            return str(json.loads(response.read())["id_token"])
    import google.auth.exceptions
    import google.auth.transport.requests
    import google.oauth2.id_token

    try:
        transport = google.auth.transport.requests.Request()
        return str(google.oauth2.id_token.fetch_id_token(transport, audience))  # type: ignore[no-untyped-call]
    except google.auth.exceptions.DefaultCredentialsError:
        pass  # a user's credentials: google-auth mints ID tokens for service accounts only
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise Cd4mlError("no ID token: sign in with `gcloud auth login` (users) or use a service account's credentials")
    done = subprocess.run([gcloud, "auth", "print-identity-token"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise Cd4mlError(f"`gcloud auth print-identity-token` failed: {done.stderr.strip()[:300]}")
    return done.stdout.strip()


def post(url: str, token: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to the decision endpoint with the token; its status and JSON answer."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _json(error.read())


def _json(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {"refused": raw.decode(errors="replace")[:300]}
    return answer if isinstance(answer, dict) else {"refused": str(answer)[:300]}


def decide(settings: Settings, run_id: str, decision: str, reason: str, wait: float = 30.0) -> int:
    """Send the decision; exit 0 when it was applied, 1 when it was refused (the command prints why)."""
    if not settings.decision_url:
        raise Cd4mlError(
            "CD4ML_DECISION_URL is not set: export it from `terraform output -raw decision_url` "
            "(`cd4ml local env` sets it for the local stack)"
        )
    status, answer = post(
        settings.decision_url,
        id_token(settings.decision_url),
        {
            "run_id": run_id,
            "decision": decision,
            "reason": reason,
        },
        timeout=wait,
    )
    if status == 200:
        print(f"{decision} of {run_id} by {answer.get('by')} applied: {answer.get('outcome')}")
        return 0
    if status == 403 and not answer.get("refused"):
        print(f"refused by Cloud Run: the caller may not invoke the decision endpoint (approvers only): {answer}")
        return 1
    print(f"refused: {answer.get('refused') or answer}")
    return 1


def policy_note(manifest: Manifest) -> str | None:
    """How ``manifest``'s approval block differs from the deployed policy (``CD4ML_APPROVAL_POLICY``), if it does;
    None when the two agree or no policy is given (production: `terraform output -raw approval_policy`)."""
    value = os.environ.get("CD4ML_APPROVAL_POLICY")
    if value is None:
        return None
    try:
        policy = Policy.of(value)
    except InvalidSettings as error:
        return str(error)
    return difference(manifest.name, manifest.approval, policy)
