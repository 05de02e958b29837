"""Push delivery in front of the Pub/Sub emulator (local_emulator/pubsub/push.py), against the real emulator.

The emulator's own push parks failing messages for good once several fail together (its retry timer dies): the
chaos storm's runs waited forever. These tests hold the relay to what Pub/Sub documents for push subscriptions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from local_emulator import stack as local
from local_emulator.common import processes
from local_emulator.pubsub import push as pubsub_push

EMULATOR = local.GCLOUD_PLATFORM / "pubsub-emulator/bin/cloud-pubsub-emulator"
pytestmark = pytest.mark.skipif(not EMULATOR.exists(), reason="needs the gcloud Pub/Sub emulator")
PROJECT = "push-test"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    argv = lambda port: [str(EMULATOR), "--host=127.0.0.1", f"--port={port}"]  # noqa: E731
    with processes.serving("pubsub", argv, tmp_path_factory.mktemp("pubsub-logs")) as host:
        yield host


class _Endpoint(ThreadingHTTPServer):
    """Answers ``fail`` times 503 per message, then 204; records (message id, deliveryAttempt, time)."""

    def __init__(self, fail: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail = fail
        self.seen: list[tuple[str, int, float]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Endpoint

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        message_id = body["message"]["messageId"]
        self.server.seen.append((message_id, int(body.get("deliveryAttempt", 0)), time.monotonic()))
        failed_before = sum(1 for m, _, _ in self.server.seen if m == message_id) - 1
        self.send_response(503 if failed_before < self.server.fail else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _relay(
    emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: int, name: str
) -> tuple[Any, Any, _Endpoint, pubsub_push.Relay]:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead = publisher.topic_path(PROJECT, name), publisher.topic_path(PROJECT, f"{name}-dead")
    for t in (topic, dead):
        publisher.create_topic(name=t)
    subscription = subscriber.subscription_path(PROJECT, name)
    subscriber.create_subscription(
        request={
            "name": subscription,
            "topic": topic,
            "ack_deadline_seconds": 60,
            "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5},
        }
    )
    subscriber.create_subscription(request={"name": f"{subscription}-held", "topic": dead})
    endpoint = _Endpoint(fail)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    routes = tmp_path / "routes.json"
    route = pubsub_push.Route(subscription, f"http://127.0.0.1:{endpoint.server_address[1]}/x", 1, 4, 60)
    pubsub_push.add_routes(routes, [route])
    relay = pubsub_push.Relay(routes)
    threading.Thread(target=relay.serve, daemon=True).start()
    return publisher, subscriber, endpoint, relay


def test_a_failed_push_is_retried_with_backoff_and_its_attempt_number(
    emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, _, endpoint, relay = _relay(emulator, tmp_path, monkeypatch, fail=2, name="retried")
    try:
        publisher.publish(publisher.topic_path(PROJECT, "retried"), b"{}").result()
        deadline = time.monotonic() + 60
        while len(endpoint.seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # acknowledged: nothing more comes
    finally:
        relay.stopping.set()
        endpoint.shutdown()
    assert [attempt for _, attempt, _ in endpoint.seen] == [1, 2, 3]
    gaps = [b - a for (_, _, a), (_, _, b) in zip(endpoint.seen, endpoint.seen[1:], strict=False)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9  # minimum backoff 1 s, doubled


def test_many_messages_failing_together_are_all_dead_lettered(
    emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulator's own push parked such messages for good (20 of 20, more than 7 minutes).
    publisher, subscriber, endpoint, relay = _relay(emulator, tmp_path, monkeypatch, fail=99, name="failing")
    topic = publisher.topic_path(PROJECT, "failing")
    ids = {publisher.publish(topic, b"{}").result() for _ in range(12)}
    held: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 90
        while len(held) < len(ids) and time.monotonic() < deadline:
            response = subscriber.pull(
                request={"subscription": subscriber.subscription_path(PROJECT, "failing-held"), "max_messages": 50},
                timeout=10,
            )
            for m in response.received_messages:
                held[m.message.message_id] = m.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"]
    finally:
        relay.stopping.set()
        endpoint.shutdown()
    assert len(held) == len(ids) and set(held.values()) == {"5"}
    per_message = {m: sum(1 for s, _, _ in endpoint.seen if s == m) for m in {s for s, _, _ in endpoint.seen}}
    assert len(per_message) == len(ids) and set(per_message.values()) == {5}


def test_a_message_near_pubsubs_size_limit_is_pushed(
    emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the chaos session: a 9 MB message (Pub/Sub takes up to 10 MB) exceeded gRPC's default 4 MB receive
    # limit and killed the relay's pulls of its subscription; later runs were never requested.
    publisher, _, endpoint, relay = _relay(emulator, tmp_path, monkeypatch, fail=0, name="large")
    try:
        message_id = publisher.publish(publisher.topic_path(PROJECT, "large"), b"x" * 9_000_000).result()
        small_id = publisher.publish(publisher.topic_path(PROJECT, "large"), b"{}").result()
        deadline = time.monotonic() + 60
        while len(endpoint.seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        relay.stopping.set()
        endpoint.shutdown()
    assert sorted(m for m, _, _ in endpoint.seen) == sorted([message_id, small_id])


def test_a_function_behind_the_relay_reads_the_attempt_and_subscription_pubsub_pushes(
    emulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end as in production: the raw push on Terraform's /projects/P/topics/T path, functions-framework's own
    conversion (which drops ``deliveryAttempt`` and ``subscription``), and ``cd4ml.push`` reading both from the
    request. The handler fails twice (HTTP 500), so Pub/Sub's attempts 1, 2, 3 must reach it."""
    import sys

    import functions_framework
    from werkzeug.serving import make_server

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    from google.cloud import pubsub_v1

    source = tmp_path / "main.py"
    source.write_text(
        "import functions_framework\nfrom cd4ml import push\nseen = []\n\n"
        "@functions_framework.cloud_event\ndef handler(event):\n"
        "    seen.append(push.message(event.data))\n"
        "    if len(seen) < 3:\n        raise RuntimeError('not yet')\n"
    )
    app = functions_framework.create_app("handler", str(source), "cloudevent")  # type: ignore[no-untyped-call]
    seen = sys.modules["main"].seen
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic, dead = publisher.topic_path(PROJECT, "attempts"), publisher.topic_path(PROJECT, "attempts-dead")
    for t in (topic, dead):
        publisher.create_topic(name=t)
    subscription = subscriber.subscription_path(PROJECT, "attempts")
    subscriber.create_subscription(
        request={
            "name": subscription,
            "topic": topic,
            "ack_deadline_seconds": 60,
            "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5},
        }
    )
    endpoint = f"http://127.0.0.1:{server.server_port}/projects/{PROJECT}/topics/attempts"
    routes = tmp_path / "routes.json"
    pubsub_push.add_routes(routes, [pubsub_push.Route(subscription, endpoint, 1, 4, 60)])
    relay = pubsub_push.Relay(routes)
    threading.Thread(target=relay.serve, daemon=True).start()
    try:
        message_id = publisher.publish(topic, b"{}", **{"ce-type": "x"}).result()
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # acknowledged: nothing more comes
    finally:
        relay.stopping.set()
        server.shutdown()
    assert [(m.message_id, m.subscription, m.delivery_attempt) for m in seen] == [
        (message_id, subscription, attempt) for attempt in (1, 2, 3)
    ]
    assert dict(seen[0].attributes) == {"ce-type": "x"}
