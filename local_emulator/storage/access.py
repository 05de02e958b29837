"""Which IAM permissions a Cloud Storage JSON API request needs, on which bucket and object (or list prefix).

Permissions per method: https://cloud.google.com/storage/docs/json_api/v1 (each method's "Authorization"
section) and https://cloud.google.com/storage/docs/access-control/iam-json: objects.get/insert/list/delete/
patch/update need storage.objects.get/create/list/delete/update; copy and rewrite need storage.objects.get on
the source and storage.objects.create on the destination; compose needs get on the sources and create on the
destination; overwriting an existing object also needs storage.objects.delete; buckets.* need storage.buckets.*.
The paths are those google-cloud-storage uses with STORAGE_EMULATOR_HOST (``/storage/v1``, ``/upload/storage/v1``,
``/download/storage/v1``) and the XML-style ``/BUCKET/OBJECT`` of public URLs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

_API = r"(?:/storage/v1)?"
_BUCKET = r"(?P<bucket>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("download", re.compile(rf"^/download/storage/v1/b/{_BUCKET}/o/(?P<object>.+)$")),
    ("upload", re.compile(rf"^/upload/storage/v1/b/{_BUCKET}/o$")),
    ("batch", re.compile(r"^/batch/storage/v1$")),
    (
        "copy",
        re.compile(
            rf"^{_API}/b/{_BUCKET}/o/(?P<object>.+?)/(?:copyTo|rewriteTo)/b/(?P<dest_bucket>[^/]+)"
            r"/o/(?P<dest_object>.+)$"
        ),
    ),
    ("compose", re.compile(rf"^{_API}/b/{_BUCKET}/o/(?P<object>.+)/compose$")),
    ("objects", re.compile(rf"^{_API}/b/{_BUCKET}/o$")),
    ("bucket_iam", re.compile(rf"^{_API}/b/{_BUCKET}/iam(?:/testPermissions)?$")),
    ("object", re.compile(rf"^{_API}/b/{_BUCKET}/o/(?P<object>.+)$")),
    ("buckets", re.compile(rf"^{_API}/b$")),
    ("bucket", re.compile(rf"^{_API}/b/{_BUCKET}$")),
    ("health", re.compile(r"^/$")),
    ("xml", re.compile(rf"^/{_BUCKET}/(?P<object>.+)$")),
]
_OBJECT_VERBS = {"GET": "get", "HEAD": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}
_BUCKET_VERBS = {"GET": "get", "HEAD": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}


@dataclass(frozen=True)
class Need:
    """One permission on one resource: an object (``name``), a listing (``list_prefix``) or a bucket."""

    permission: str
    bucket: str
    name: str | None = None
    list_prefix: str | None = None
    overwrite_check: bool = False  # create: also needs storage.objects.delete if ``name`` exists already

    @property
    def resource(self) -> str:
        """What GCS names in its 403: the object, or the bucket for listings and bucket calls."""
        return "object" if self.name is not None else "bucket"


@dataclass(frozen=True)
class Access:
    """What a request needs; ``unsupported`` says why the proxy cannot tell (refused unless admin)."""

    needs: tuple[Need, ...] = ()
    unsupported: str | None = None
    resumable_session: str | None = None  # the upload_id a PUT continues (authorized when the session began)


def required(method: str, path: str, query: str, body: bytes, content_type: str) -> Access:
    """The permissions a request needs, from its method, path, query string and (for uploads) its metadata."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    for route, pattern in _ROUTES:
        match = pattern.match(path)
        if match is None:
            continue
        groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        bucket = groups.get("bucket", "")
        if route == "health":
            return Access()
        if route in ("download", "xml") and method in ("GET", "HEAD"):
            return Access((Need("storage.objects.get", bucket, groups["object"]),))
        if route == "xml" and method == "PUT":
            return Access((Need("storage.objects.create", bucket, groups["object"], overwrite_check=True),))
        if route == "upload" and method == "PUT" and "upload_id" in params:
            return Access(resumable_session=params["upload_id"])
        if route == "upload" and method == "POST":
            name = params.get("name") or _metadata_name(body, content_type)
            if not name:
                return Access(unsupported="an upload whose object name the proxy cannot read")
            return Access((Need("storage.objects.create", bucket, name, overwrite_check=True),))
        if route == "copy" and method == "POST":
            return Access(
                (
                    Need("storage.objects.get", bucket, groups["object"]),
                    Need("storage.objects.create", groups["dest_bucket"], groups["dest_object"], overwrite_check=True),
                )
            )
        if route == "compose" and method == "POST":
            listed = _json(body).get("sourceObjects")
            items = listed if isinstance(listed, list) else []
            sources = [str(s.get("name", "")) for s in items if isinstance(s, dict)]
            return Access(
                (
                    *(Need("storage.objects.get", bucket, s) for s in sources),
                    Need("storage.objects.create", bucket, groups["object"], overwrite_check=True),
                )
            )
        if route == "objects" and method == "GET":
            return Access((Need("storage.objects.list", bucket, list_prefix=params.get("prefix", "")),))
        if route == "object" and method in _OBJECT_VERBS:
            return Access((Need(f"storage.objects.{_OBJECT_VERBS[method]}", bucket, groups["object"]),))
        if route == "bucket" and method in _BUCKET_VERBS:
            return Access((Need(f"storage.buckets.{_BUCKET_VERBS[method]}", bucket),))
        if route == "buckets":
            return Access((Need("storage.buckets.list" if method == "GET" else "storage.buckets.create", ""),))
        if route == "bucket_iam":
            verb = "setIamPolicy" if method == "PUT" else "getIamPolicy"
            return Access((Need(f"storage.buckets.{verb}", bucket),))
        return Access(unsupported=f"{method} {route} requests")
    return Access(unsupported=f"{method} {path}")


def denial(principal: str, need: Need) -> dict[str, object]:
    """GCS's 403 body (JSON API error shape, wording as GCS answers, e.g. tests in googleapis' own samples)."""
    message = (
        f"{principal} does not have {need.permission} access to the Google Cloud Storage {need.resource}. "
        f"Permission '{need.permission}' denied on resource (or it may not exist)."
    )
    return {
        "error": {
            "code": 403,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "forbidden"}],
        }
    }


def _json(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _metadata_name(body: bytes, content_type: str) -> str | None:
    """The ``name`` in an upload's JSON metadata: the body (resumable) or the first part (multipart/related)."""
    if content_type.startswith("multipart/"):
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if boundary is None:
            return None
        parts = body.split(b"--" + boundary[1].encode())
        first = parts[1] if len(parts) > 1 else b""
        _, _, payload = first.partition(b"\r\n\r\n")
        name = _json(payload.strip()).get("name")
    else:
        name = _json(body).get("name")
    return name if isinstance(name, str) else None
