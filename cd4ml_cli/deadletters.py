"""Reading the stages' dead-letter holds without consuming them: every held message, every stage at once."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cd4ml import catalog


def subscriber() -> Any:
    """A subscriber that accepts messages of any size: Pub/Sub takes up to 10 MB, gRPC's default refuses > 4 MB."""
    from google.cloud import pubsub_v1

    emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
    if not emulator:
        return pubsub_v1.SubscriberClient()  # its production channel already lifts the limit
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(emulator, options=[("grpc.max_receive_message_length", -1)])
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def held_messages(subscriber: Any, path: str, page: int = 100, quiet_pulls: int = 2) -> list[Any]:
    """Every message held in ``path``, pulled page by page and then handed back, so looking consumes nothing.

    Pulled messages stay leased (not redelivered to this look) until all are read; a pull may come back
    empty although messages wait, so the look ends after ``quiet_pulls`` empty pulls in a row. Each pull
    returns at once when nothing is there (``return_immediately``: a waiting pull holds until its deadline
    when a subscription is empty — 3 s a stage made an empty listing of 18 stages take ~80 s).
    """
    from google.api_core.exceptions import DeadlineExceeded

    received: list[Any] = []
    seen: set[str] = set()
    quiet = 0
    try:
        while quiet < quiet_pulls:
            try:
                pulled = subscriber.pull(
                    request={"subscription": path, "max_messages": page, "return_immediately": True}, timeout=10
                ).received_messages
            except DeadlineExceeded:
                pulled = []
            fresh = [r for r in pulled if r.message.message_id not in seen]
            seen.update(r.message.message_id for r in fresh)
            received += fresh
            quiet = 0 if fresh else quiet + 1
            if not fresh and quiet < quiet_pulls:
                time.sleep(0.2)
    finally:
        for start in range(0, len(received), 1000):  # hand them back at once
            subscriber.modify_ack_deadline(
                request={
                    "subscription": path,
                    "ack_deadline_seconds": 0,
                    "ack_ids": [r.ack_id for r in received[start : start + 1000]],
                }
            )
    return received


def held_by_stage(subscriber: Any, project: str, stages: Sequence[str]) -> dict[str, list[Any]]:
    """Each stage's held messages, the stages looked at in parallel (in the order given)."""
    paths = [subscriber.subscription_path(project, catalog.dead_letter_hold(stage)) for stage in stages]
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
        return dict(zip(stages, pool.map(lambda p: held_messages(subscriber, p), paths), strict=True))
