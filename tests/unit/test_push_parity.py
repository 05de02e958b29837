"""The local stack pushes each function exactly the request the Terraform-deployed subscription sends, and the
stages read the delivery attempt from that request, as they must in production."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from local_emulator.pubsub import push as pubsub_push
from local_emulator.pubsub import topology
from local_emulator.stack.supervisor import forwarded_headers

from cd4ml import catalog

REPO = Path(__file__).resolve().parents[2]
PROJECT = "cd4ml-example"


def _terraform_push() -> tuple[str, bool, bool]:
    """terraform/pubsub.tf's stage subscription: (endpoint path template, dead-letter policy?, no_wrapper?)."""
    text = (REPO / "terraform" / "pubsub.tf").read_text()
    start = text.index('resource "google_pubsub_subscription" "stage"')
    body = text[start : text.index('resource "google_pubsub_subscription"', start + 1)]
    uri = r"\$\{google_cloudfunctions2_function\.stage\[each\.value\.stage\]\.service_config\[0\]\.uri\}"
    endpoint = re.search(rf'push_endpoint\s*=\s*"{uri}([^"]*)"', body)
    assert endpoint, "terraform/pubsub.tf: the stage subscription's push_endpoint is not FUNCTION_URL/PATH"
    return endpoint[1], re.search(r"\bdead_letter_policy\s*\{", body) is not None, "no_wrapper" in body


def _production_path(template: str, topic: str) -> str:
    return template.replace("${var.project_id}", PROJECT).replace("${each.value.topic}", topic)


#: The push body Pub/Sub documents (https://cloud.google.com/pubsub/docs/push#receive_push; googleapis/googleapis#661
#: shows a message without attributes pushed without the key), wrapped since Terraform sets no ``no_wrapper``, with
#: ``deliveryAttempt`` since it sets a dead-letter policy (https://cloud.google.com/pubsub/docs/handling-failures).
_MESSAGE_KEYS = {"data", "messageId", "message_id", "publishTime", "publish_time"}


class _Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Record)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []


class _Record(BaseHTTPRequestHandler):
    server: _Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.command, self.path, dict(self.headers.items()), body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _received(attributes: dict[str, str], attempt: int) -> Any:
    from google.pubsub_v1 import PubsubMessage, ReceivedMessage

    message = PubsubMessage(
        data=b"{}", attributes=attributes, message_id="12", publish_time=datetime(2030, 1, 1, 3, tzinfo=UTC)
    )
    return ReceivedMessage(ack_id="a", message=message, delivery_attempt=attempt)


def test_every_stage_subscription_pushes_to_terraforms_endpoint_path() -> None:
    template, _, _ = _terraform_push()
    subscriptions = [s for s in topology.plan(catalog.load()).subscriptions if s.stage is not None]
    assert subscriptions
    for sub in subscriptions:
        route = topology.route(PROJECT, sub, "http://127.0.0.1:9")
        assert urlsplit(route.endpoint).path == _production_path(template, sub.topic), sub.name
        assert route.subscription == f"projects/{PROJECT}/subscriptions/{sub.name}"


def test_the_local_push_request_is_the_one_the_terraform_subscription_sends(recorder: _Recorder) -> None:
    template, dead_letter_policy, no_wrapper = _terraform_push()
    assert dead_letter_policy and not no_wrapper  # what the expected body below depends on
    [sub] = [s for s in topology.plan(catalog.load()).subscriptions if s.stage == "evaluate"]
    route = topology.route(PROJECT, sub, f"http://127.0.0.1:{recorder.server_address[1]}")
    for attributes in ({"ce-type": "cd4ml.training.completed.v1"}, {}):
        status, _ = pubsub_push._post(pubsub_push.push_request(route, _received(attributes, 2)), 5)
        assert status == 204
    (method, path, headers, body), (_, _, _, bare) = recorder.requests
    assert (method, path) == ("POST", _production_path(template, sub.topic))
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["content-type"] == "application/json"
    assert lower["user-agent"].startswith("APIs-Google")  # Google's push user agent
    assert not [k for k in lower if k.startswith("ce-")]  # a raw push, not a CloudEvent
    # Production also sends Authorization: Bearer <OIDC token> (oidc_token); Cloud Run checks it before the function.
    pushed = json.loads(body)
    assert set(pushed) == {"message", "subscription", "deliveryAttempt"}
    assert set(pushed["message"]) == _MESSAGE_KEYS | {"attributes"}
    assert (pushed["subscription"], pushed["deliveryAttempt"]) == (route.subscription, 2)
    assert set(json.loads(bare)["message"]) == _MESSAGE_KEYS
    # The chaos session's supervisor (Cloud Run's part) hands the instance that request, adding nothing.
    forwarded = forwarded_headers(headers)
    assert {k.lower() for k in forwarded} == set(lower) - {"host", "content-length", "connection"}
    assert all(forwarded[k] == headers[k] for k in forwarded)


def test_a_stage_reads_the_subscription_and_delivery_attempt_of_a_production_push(tmp_path: Path) -> None:
    """functions-framework's conversion drops both (the retry limit fell back to a Firestore counter, per message and
    subscription, which production could not tell apart); ``cd4ml.push`` reads them from the request itself."""
    import functions_framework

    source = tmp_path / "main.py"
    source.write_text(
        "import functions_framework\nfrom cd4ml import push\nseen = []\n\n"
        "@functions_framework.cloud_event\ndef handler(event):\n    seen.append(push.message(event.data))\n"
    )
    app = functions_framework.create_app("handler", str(source), "cloudevent")  # type: ignore[no-untyped-call]
    push = {
        "message": {"data": "e30=", "messageId": "494", "message_id": "494", "publishTime": "2030-01-01T00:00:00Z"},
        "subscription": "projects/p/subscriptions/cd4ml-promote-twin1",
        "deliveryAttempt": 5,
    }
    path = "/projects/p/topics/cd4ml-canary-succeeded-v1"
    headers = {"Content-Type": "application/json", "User-Agent": pubsub_push.PUSH_HEADERS["User-Agent"]}
    assert app.test_client().post(path, data=json.dumps(push), headers=headers).status_code == 200
    [message] = sys.modules["main"].seen  # functions-framework loads the source as module "main"
    assert (message.subscription, message.message_id, message.delivery_attempt) == (push["subscription"], "494", 5)
