"""The command never leaves a user at a dead end: errors in one line with the fix, what went wrong shown as it
happens, the run's logs at hand."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
from cd4ml_cli import follow, known_models, reach, run_logs, timeline

from cd4ml.errors import Cd4mlError

REJECTED = {
    "stage": "evaluate",
    "message_id": "m-17",
    "reason": "invalid event cd4ml.training.completed.v1: data.model_artifact.sha256: 'x' does not match",
    "at": "2026-12-07T02:00:05.000Z",
}
RECORD = {
    "run_id": "digits-20261207t020000z",
    "model": "digits",
    "status": "running",
    "events": [
        {"id": "e1", "type": "cd4ml.run.requested.v1", "time": "2026-12-07T02:00:00.000Z"},
        {"id": "e2", "type": "cd4ml.data.fetched.v1", "time": "2026-12-07T02:00:01.000Z"},
    ],
    "rejected_messages": [REJECTED],
    "rejected_count": 3,
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_emulator_is_named_in_one_line_with_the_fix_within_seconds() -> None:
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(Cd4mlError) as refused:
        reach.probe_emulators({"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}", "PUBSUB_EMULATOR_HOST": ""})
    assert time.monotonic() - started < reach.PROBE_TIMEOUT + 1
    text = str(refused.value)
    assert "\n" not in text
    assert text.startswith(f"Firestore at 127.0.0.1:{port} (FIRESTORE_EMULATOR_HOST) does not answer")
    assert text.endswith("`cd4ml local down && cd4ml local up`")


def test_a_retry_error_becomes_one_line_not_a_grpc_dump() -> None:
    from google.api_core import exceptions

    cause = exceptions.ServiceUnavailable("failed to connect to all addresses; last error: UNKNOWN: ipv4:...\n...")  # type: ignore[no-untyped-call]
    line = reach.explain(exceptions.RetryError("Timeout of 300.0s exceeded", cause))  # type: ignore[no-untyped-call]
    assert "\n" not in line and line.startswith("a service did not answer in time (ServiceUnavailable)")


def test_status_shows_the_messages_rejected_for_the_run() -> None:
    text = timeline.render(RECORD)
    assert (
        "  rejected  02:00:05  evaluate dead-lettered message m-17: invalid event cd4ml.training.completed.v1" in text
    )
    assert "… 2 earlier rejected messages not kept" in text


def test_following_a_run_prints_a_rejected_message_once_in_time_order() -> None:
    out = io.StringIO()
    shown: set[str] = set()
    follow._show_new(RECORD, shown, out)
    follow._show_new(RECORD, shown, out)  # the next poll: nothing new
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert "run.requested" in lines[0] and "data.fetched" in lines[1]
    assert lines[2].startswith("  rejected  02:00:05  evaluate dead-lettered message m-17")


def test_logs_of_one_run_from_the_stacks_files_in_time_order(tmp_path: Path) -> None:
    run = "digits-20261207t020000z"
    lines = {
        "fn-evaluate.log": [
            {"time": "2026-12-07T02:00:09Z", "severity": "INFO", "stage": "evaluate", "run_id": run, "message": "b"},
            {
                "time": "2026-12-07T02:00:01Z",
                "severity": "INFO",
                "stage": "evaluate",
                "run_id": "other",
                "message": "x",
            },
        ],
        "fn-fetch_data.log": [
            {"time": "2026-12-07T02:00:02Z", "severity": "ERROR", "stage": "fetch_data", "run_id": run, "message": "a"}
        ],
    }
    for name, entries in lines.items():
        (tmp_path / name).write_text("\n".join(json.dumps(e) for e in entries) + "\nnot json " + run + "\n")
    found = run_logs.local_lines(tmp_path, run, None)
    assert [e["message"] for e in found] == ["a", "b"]
    assert [e["message"] for e in run_logs.local_lines(tmp_path, run, "evaluate")] == ["b"]
    assert next(run_logs.render(found)).startswith("2026-12-07T02:00:02Z  ERROR    fetch_data       a")


def test_the_cli_looks_for_manifests_where_push_puts_them() -> None:
    from cd4ml.manifest import manifest_object

    assert manifest_object("digits") == "manifests/digits.yaml"
    assert manifest_object("digits").startswith(known_models.PREFIX)


class _Storage(BaseHTTPRequestHandler):
    """Cloud Storage's objects.list, as much as the listing reads: pages of items, or an error status."""

    status = 200
    pages: ClassVar[dict[str, dict[str, object]]] = {}
    asked: ClassVar[list[str]] = []

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        _Storage.asked.append(self.path)
        query = parse_qs(urlparse(self.path).query)
        body = json.dumps(_Storage.pages.get(query.get("pageToken", [""])[0], {})).encode()
        self.send_response(_Storage.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def storage() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Storage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Storage.status, _Storage.asked = 200, []
    _Storage.pages = {
        "": {"items": [{"name": "manifests/digits.yaml"}, {"name": "manifests/README"}], "nextPageToken": "p2"},
        "p2": {"items": [{"name": "manifests/diabetes.yaml"}]},
    }
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_known_models_are_listed_in_one_request_per_page_without_a_client_library(storage: str) -> None:
    env = {"STORAGE_EMULATOR_HOST": storage}
    assert known_models.names("arts", env, 5.0, "FIX") == ["diabetes", "digits"]
    assert [urlparse(a).path for a in _Storage.asked] == ["/storage/v1/b/arts/o"] * 2  # objects.list, both pages
    assert parse_qs(urlparse(_Storage.asked[0]).query)["prefix"] == ["manifests/"]


def test_listing_the_known_models_fails_in_one_line_or_defers_to_the_run(storage: str) -> None:
    env = {"STORAGE_EMULATOR_HOST": storage}
    _Storage.status = 403  # may not list: the run request is the check then
    assert known_models.names("arts", env, 5.0, "FIX") is None
    _Storage.status = 404
    with pytest.raises(Cd4mlError, match=r"^no bucket gs://arts \(CD4ML_ARTIFACT_BUCKET\): FIX$"):
        known_models.names("arts", env, 5.0, "FIX")
    dead = {"STORAGE_EMULATOR_HOST": f"127.0.0.1:{_closed_port()}"}
    with pytest.raises(Cd4mlError) as refused:
        known_models.names("arts", dead, 5.0, "FIX")
    assert "\n" not in str(refused.value) and str(refused.value).endswith(
        "does not answer ([Errno 111] Connection refused): FIX"
    )
