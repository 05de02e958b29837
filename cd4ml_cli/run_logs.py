"""``cd4ml logs RUN [--stage S]``: the log lines the functions wrote about one run, in time order.

The functions log JSON lines naming ``run_id`` and ``stage`` (cd4ml.logs). On the local stack they are in the
stack's log files (a plugin names the folder); on Google Cloud in Cloud Logging, read through its REST API
(``entries:list``, https://cloud.google.com/logging/docs/reference/v2/rest/v2/entries/list) with the filter the
README gives, as the caller (``roles/logging.viewer``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cd4ml.errors import Cd4mlError


def local_lines(folder: Path, run_id: str, stage: str | None) -> list[dict[str, Any]]:
    """The JSON log lines of the run in the stack's function logs (``fn-*.log``), oldest first."""
    found = []
    for file in sorted(folder.glob("fn-*.log")):
        for line in file.read_text(errors="replace").splitlines():
            if run_id not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("run_id") == run_id and stage in (None, entry.get("stage")):
                found.append(entry)
    return sorted(found, key=lambda e: str(e.get("time", "")))


def cloud_lines(project: str, run_id: str, stage: str | None, limit: int = 1000) -> list[dict[str, Any]]:
    """The run's entries in Cloud Logging (the functions' jsonPayload), oldest first."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/logging.read"])
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    query = f'jsonPayload.run_id="{run_id}"' + (f' AND jsonPayload.stage="{stage}"' if stage else "")
    body = {"resourceNames": [f"projects/{project}"], "filter": query, "orderBy": "timestamp asc", "pageSize": limit}
    response = session.post("https://logging.googleapis.com/v2/entries:list", json=body, timeout=30)
    if response.status_code != 200:
        raise Cd4mlError(
            f"Cloud Logging answered {response.status_code} for the run's logs: "
            f"{response.text[:200]!r}; reading them needs roles/logging.viewer on {project}"
        )
    return [
        {**(e.get("jsonPayload") or {}), "time": e.get("timestamp"), "severity": e.get("severity")}
        for e in response.json().get("entries") or []
    ]


def render(entries: list[dict[str, Any]]) -> Iterator[str]:
    """One line per entry: time, severity, stage, message, then the fields worth reading."""
    skip = {"time", "severity", "stage", "message", "run_id", "logger", "model", "event_id", "message_id"}
    for e in entries:
        extra = {k: v for k, v in e.items() if k not in skip}
        tail = f"  {json.dumps(extra, default=str)[:400]}" if extra else ""
        yield f"{e.get('time', '?')}  {e.get('severity', '?'):<8} {e.get('stage', '?'):<16} {e.get('message', '')}{tail}"
