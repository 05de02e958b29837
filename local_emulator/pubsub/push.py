"""Pub/Sub push delivery, as the service does it, in front of the Pub/Sub emulator (a stand-in for one feature).

The emulator's own push loses messages: with a ``retryPolicy``, once several messages of a subscription fail in
one pass, its timer that releases delayed messages dies (read in its classes: two messages land under one
delivery time, the second release finds no record and throws, and the scheduled task is cancelled for good), and
from then on every message of that subscription that fails twice is neither pushed again nor dead-lettered
(measured: 20 of 20 failing messages parked for more than 7 minutes; the chaos storm's runs waited forever).
Without a retry policy it retries every second, far from what production does. Its pushes also carry no
``deliveryAttempt``.

So stage subscriptions are pull subscriptions on the emulator, with the dead-letter policy (the emulator
dead-letters reliably on pull: measured 5 attempts, then the dead-letter topic with
``CloudPubSubDeadLetterSourceDeliveryCount``), and this process pushes what it pulls, as documented for push
subscriptions (https://cloud.google.com/pubsub/docs/push, /handling-failures):
- the request is the one a push subscription sends (:func:`push_request`): a POST to the endpoint (Terraform's
  ``FUNCTION_URL/projects/P/topics/T``, ``topology.route``) with ``Content-Type: application/json``, Google's push
  user agent ``APIs-Google`` (https://developers.google.com/search/docs/crawling-indexing/apis-user-agent), and the
  body ``{"message": {"attributes" (only when there are some), "data", "messageId", "message_id",
  "publishTime", "publish_time"}, "subscription", "deliveryAttempt"}``: Pub/Sub's documented push body
  (https://cloud.google.com/pubsub/docs/push#receive_push; googleapis/googleapis#661 shows a push of a message
  without attributes, which has no ``attributes`` key), ``deliveryAttempt`` because every stage subscription has
  a dead-letter policy (https://cloud.google.com/pubsub/docs/handling-failures). Terraform sets neither
  ``no_wrapper`` nor ``write_metadata``, which would send the bare data with attributes as headers instead;
- a 200, 201, 202, 204 or 102 answer acknowledges; anything else (or no answer within the ack deadline) is a
  failed attempt, retried after the retry policy's exponential backoff (``minimum × 2^(attempt-1)``, at most
  ``maximum``), by setting the message's ack deadline to that backoff (the emulator then counts the attempt and
  dead-letters the message once the attempts are spent);
- a few pushes in flight per subscription (flow control), each waiting up to the ack deadline.

Routes (subscription → endpoint) are read from a JSON file that ``topology.subscribe`` adds to; the file is
read again whenever it changes, so subscriptions added later (the chaos session's twins) are served too, and a
subscription's newer route replaces its older one.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
#: Pushes in flight per subscription.
IN_FLIGHT = 4
#: Subscriptions sharing one gRPC channel (each holds a long-polling pull open; a channel carries ~100 streams).
PER_CHANNEL = 40


@dataclass(frozen=True)
class Route:
    """A push subscription: where its messages go and how failures are retried."""

    subscription: str  # projects/P/subscriptions/S
    endpoint: str
    minimum_backoff_seconds: float
    maximum_backoff_seconds: float
    ack_deadline_seconds: int

    @classmethod
    def of(cls, entry: dict[str, Any]) -> Route:
        return cls(
            subscription=str(entry["subscription"]),
            endpoint=str(entry["endpoint"]),
            minimum_backoff_seconds=float(entry["minimum_backoff_seconds"]),
            maximum_backoff_seconds=float(entry["maximum_backoff_seconds"]),
            ack_deadline_seconds=int(entry["ack_deadline_seconds"]),
        )


def backoff_seconds(route: Route, attempt: int) -> int:
    """The delay before the next attempt after ``attempt`` failed: exponential from the minimum, capped."""
    delay = route.minimum_backoff_seconds * math.pow(2, max(0, attempt - 1))
    return max(1, round(min(delay, route.maximum_backoff_seconds)))


#: The headers of a push (besides Host, Content-Length and, in production, the OIDC token's Authorization).
PUSH_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "APIs-Google (+https://developers.google.com/webmasters/APIs-Google.html)",
}


def push_body(received: Any, subscription: str) -> bytes:
    """What Pub/Sub posts to a push endpoint for one received message (wrapped, not unwrapped, payload)."""
    message = received.message
    stamp = message.publish_time
    published = stamp.isoformat().replace("+00:00", "Z") if hasattr(stamp, "isoformat") else str(stamp)
    wrapped: dict[str, Any] = {"attributes": dict(message.attributes)} if message.attributes else {}
    wrapped |= {
        "data": base64.b64encode(message.data).decode(),
        "messageId": message.message_id,
        "message_id": message.message_id,
        "publishTime": published,
        "publish_time": published,
    }
    body: dict[str, Any] = {"message": wrapped, "subscription": subscription}
    if received.delivery_attempt:
        body["deliveryAttempt"] = received.delivery_attempt
    return json.dumps(body).encode()


def push_request(route: Route, received: Any) -> urllib.request.Request:
    """The HTTP request a push subscription sends for one received message (see the module's docstring)."""
    body = push_body(received, route.subscription)
    return urllib.request.Request(route.endpoint, data=body, method="POST", headers=dict(PUSH_HEADERS))


def add_routes(path: Path, routes: Sequence[Route]) -> None:
    """Add ``routes`` to the route file, each replacing an older route of its subscription (a route file left by a
    stopped stack named its dead ports); written whole, then renamed: the relay never reads half a file."""
    replaced = {r.subscription for r in routes}
    current = [e for e in (json.loads(path.read_text()) if path.exists() else []) if e["subscription"] not in replaced]
    current += [r.__dict__ for r in routes]
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(current, indent=1))
    partial.replace(path)


class Relay:
    """Pulls each routed subscription and pushes its messages to the route's endpoint."""

    def __init__(self, routes_file: Path) -> None:
        self.routes_file = routes_file
        self.stopping = threading.Event()
        self.served: set[str] = set()
        self.routes: dict[str, Route] = {}  # the latest route of each subscription: a pull loop pushes there
        self.clients: list[Any] = []
        self.pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="push")

    def serve(self) -> None:
        seen = -1.0
        while not self.stopping.is_set():
            try:
                mtime = self.routes_file.stat().st_mtime
            except FileNotFoundError:
                mtime = -1.0
            if mtime != seen:
                seen = mtime
                for entry in json.loads(self.routes_file.read_text()) if mtime >= 0 else []:
                    route = Route.of(entry)
                    self.routes[route.subscription] = route
                    if route.subscription not in self.served:
                        self.served.add(route.subscription)
                        args = (route, self._client())
                        threading.Thread(target=self._pull_loop, args=args, daemon=True).start()
            self.stopping.wait(0.5)

    def _client(self) -> Any:
        """A client for one more subscription (called by ``serve`` alone): a new channel every PER_CHANNEL."""
        if not self.clients or len(self.served) > PER_CHANNEL * len(self.clients):
            self.clients.append(subscriber_client())
        return self.clients[-1]

    def _pull_loop(self, route: Route, subscriber: Any) -> None:
        from google.api_core import exceptions

        slots = threading.BoundedSemaphore(IN_FLIGHT)
        while not self.stopping.is_set():
            slots.acquire()
            free = 1
            while free < IN_FLIGHT and slots.acquire(blocking=False):
                free += 1
            try:
                response = subscriber.pull(
                    request={"subscription": route.subscription, "max_messages": free}, timeout=30
                )
                received = list(response.received_messages)
            except (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable, exceptions.RetryError):
                received = []
            except exceptions.NotFound:
                _log("subscription gone; no longer pushed", route.subscription)
                return
            except Exception as trouble:
                _log(f"pull failed, pulling again in 1 s: {type(trouble).__name__}: {trouble}", route.subscription)
                self.stopping.wait(1.0)
                received = []
            route = self.routes.get(route.subscription, route)
            for message in received:
                self.pool.submit(self._push, subscriber, route, message, slots)
            for _ in range(free - len(received)):
                slots.release()

    def _push(self, subscriber: Any, route: Route, received: Any, slots: threading.BoundedSemaphore) -> None:
        try:
            status, why = _post(push_request(route, received), route.ack_deadline_seconds)
            if status in ACK_STATUSES:
                subscriber.acknowledge(request={"subscription": route.subscription, "ack_ids": [received.ack_id]})
                return
            delay = backoff_seconds(route, received.delivery_attempt or 1)
            _log(
                f"push of message {received.message.message_id} (attempt {received.delivery_attempt}) failed: "
                f"{why}; next attempt in {delay} s",
                route.subscription,
            )
            subscriber.modify_ack_deadline(
                request={
                    "subscription": route.subscription,
                    "ack_ids": [received.ack_id],
                    "ack_deadline_seconds": delay,
                }
            )
        except Exception as trouble:
            _log(f"push of message {received.message.message_id}: {type(trouble).__name__}: {trouble}", "")
        finally:
            slots.release()


def subscriber_client() -> Any:
    """A SubscriberClient of the emulator (PUBSUB_EMULATOR_HOST) that receives what Pub/Sub accepts: messages up
    to 10 MB (gRPC's default 4 MB limit made the chaos session's 9 MB message kill the pulls of its subscription).
    """
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    unlimited = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    channel = grpc.insecure_channel(os.environ["PUBSUB_EMULATOR_HOST"], options=unlimited)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def _post(request: urllib.request.Request, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, f"HTTP {response.status}"
    except urllib.error.HTTPError as refused:
        return refused.code, f"HTTP {refused.code} {refused.read()[:200]!r}"
    except OSError as lost:
        return 0, f"{type(lost).__name__}: {lost}"


def _log(message: str, subscription: str) -> None:
    entry = {"severity": "INFO", "message": message, "subscription": subscription, "time": time.time()}
    print(json.dumps(entry), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--routes", type=Path, required=True, help="the route file topology.subscribe writes")
    args = parser.parse_args(argv)
    relay = Relay(args.routes)
    signal.signal(signal.SIGTERM, lambda *_: relay.stopping.set())
    _log("pushing", str(args.routes))
    relay.serve()
    sys.stdout.flush()
    os._exit(0)  # pushes still waiting on an endpoint are abandoned: their messages come back to the next relay


if __name__ == "__main__":
    main()
