"""A stand-in for the team's webhooks: a Slack incoming webhook and a generic JSON endpoint that record what they got.

``POST /slack/CHANNEL`` answers as a Slack incoming webhook does: 200 ``ok`` for a JSON object with ``text`` (or
``blocks`` / ``attachments``), 400 ``invalid_payload`` for a body that is not a JSON object, 400 ``no_text`` for one
with nothing to show (https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks lists the
status codes and body strings). ``POST /json/CHANNEL`` takes any JSON object (200), else 400. ``GET /received``
lists everything accepted, in order, with its channel; ``POST /fail?count=N`` makes the next N posts answer 500
(an outage, for retry tests). The local stack writes ``http://HOST:PORT/<format>/<channel>`` as each channel's
secret, and ``cd4ml local env --json`` names the receiver (``notify``).
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

_LOCK = threading.Lock()


class Receiver:
    """What was received, kept in memory and appended to ``received.jsonl`` in the state directory."""

    def __init__(self, state: Path) -> None:
        self.file = state / "received.jsonl"
        state.mkdir(parents=True, exist_ok=True)
        self.received: list[dict[str, Any]] = (
            [json.loads(line) for line in self.file.read_text().splitlines() if line.strip()]
            if self.file.exists()
            else []
        )
        self.failures_left = 0

    def accept(self, kind: str, channel: str, body: bytes) -> tuple[int, str]:
        """The status and body the real endpoint would answer, recording the post when it is accepted."""
        with _LOCK:
            if self.failures_left > 0:
                self.failures_left -= 1
                return 500, "rollup_error"
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if not isinstance(payload, dict):
            return 400, "invalid_payload"
        if kind == "slack" and not any(payload.get(k) for k in ("text", "blocks", "attachments")):
            return 400, "no_text"
        entry = {"format": kind, "channel": channel, "body": payload}
        with _LOCK:
            self.received.append(entry)
            with self.file.open("a") as out:
                out.write(json.dumps(entry) + "\n")
        return 200, "ok"


def handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path == "/health":
                self._answer(200, "ok")
            elif path == "/received":
                with _LOCK:
                    listed = json.dumps(receiver.received)
                self._answer(200, listed, "application/json")
            else:
                self._answer(404, "not_found")

        def do_POST(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = url.path.strip("/").split("/")
            if parts == ["fail"]:
                with _LOCK:
                    receiver.failures_left = int(parse_qs(url.query).get("count", ["1"])[0])
                self._answer(200, "ok")
            elif len(parts) == 2 and parts[0] in ("slack", "json") and parts[1]:
                self._answer(*receiver.accept(parts[0], parts[1], body))
            else:
                self._answer(404, "no_service")

        def log_message(self, format: str, *args: Any) -> None:
            return  # the stack's log stays for the functions; received.jsonl is the record

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    ThreadingHTTPServer((args.host, args.port), handler(Receiver(args.state_dir))).serve_forever()
