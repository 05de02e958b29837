"""The models a deployment knows: the manifests in its artifact bucket, listed in one call a fresh process makes fast.

``cd4ml run TYPO`` must be refused in well under two seconds from a fresh process; importing the Cloud Storage
client library (and with it gRPC and protobuf, through google.api_core) costs more than that on a busy machine.
So the listing is Cloud Storage's JSON API ``objects.list`` (https://cloud.google.com/storage/docs/json_api/v1/objects/list),
the very request the client library sends, made with the standard library: against ``STORAGE_EMULATOR_HOST``
without credentials (as the client does with an emulator), else ``storage.googleapis.com`` with an access token
from Application Default Credentials (google.auth, imported only then).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from cd4ml.errors import Cd4mlError

PREFIX = "manifests/"  # cd4ml.manifest.manifest_object's folder (that module loads jsonschema: a second here)
STORAGE_API = "https://storage.googleapis.com"
READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"


def names(bucket: str, env: Mapping[str, str], timeout: float, fix: str) -> list[str] | None:
    """The model names of ``gs://BUCKET/manifests/*.yaml``, sorted; None when the caller may not list them (the run
    request is the check then: fetch_data dead-letters an unknown model). Cd4mlError, ending with ``fix``, when
    Cloud Storage does not answer."""
    emulator = env.get("STORAGE_EMULATOR_HOST", "")
    base = (emulator if "://" in emulator else f"http://{emulator}") if emulator else STORAGE_API
    headers = {} if emulator else {"Authorization": f"Bearer {_access_token(fix)}"}
    found: list[str] = []
    page = ""
    while True:
        query = urllib.parse.urlencode({"prefix": PREFIX, **({"pageToken": page} if page else {})})
        url = f"{base.rstrip('/')}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
                listing = json.load(response)
        except urllib.error.HTTPError as refused:
            if refused.code == 403:
                return None
            if refused.code == 404:
                raise Cd4mlError(f"no bucket gs://{bucket} (CD4ML_ARTIFACT_BUCKET): {fix}") from None
            raise Cd4mlError(
                f"listing gs://{bucket}/{PREFIX} failed: HTTP {refused.code} {refused.reason}: {fix}"
            ) from None
        except (OSError, ValueError) as trouble:  # URLError, a timeout, a reset, a body that is not JSON
            why = getattr(trouble, "reason", None) or trouble
            raise Cd4mlError(f"Cloud Storage at {base} does not answer ({why}): {fix}") from None
        found += [str(item["name"]) for item in listing.get("items", [])]
        page = str(listing.get("nextPageToken") or "")
        if not page:
            break
    return sorted(n.removeprefix(PREFIX).removesuffix(".yaml") for n in found if n.endswith(".yaml"))


def _access_token(fix: str) -> str:
    """An access token of Application Default Credentials, read-only for Cloud Storage."""
    import google.auth
    from google.auth.exceptions import GoogleAuthError
    from google.auth.transport.requests import Request

    try:
        credentials, _ = google.auth.default(scopes=[READ_ONLY])
        credentials.refresh(Request())  # type: ignore[no-untyped-call]
    except GoogleAuthError as missing:
        raise Cd4mlError(f"no credentials for Cloud Storage ({missing}): {fix}") from None
    return str(credentials.token)
