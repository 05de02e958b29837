"""The bare hop: a functions-framework CloudEvent function that republishes what it receives, and nothing else.

Served as ``python -m functions_framework --source benchmarks/_bare_hop.py --target hop --signature-type
cloudevent`` behind a push subscription. It stamps the time it got the message (``bench-time``, epoch
seconds) and republishes the message's attributes to ``BENCH_HOP_TOPIC`` with the publisher cd4ml uses
(one message a batch): the same push, framework and publish a cd4ml stage has, without its orchestration.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent


@functools.cache
def _publisher() -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))


@functools.cache
def _topic() -> str:
    return os.environ["BENCH_HOP_TOPIC"]


@functions_framework.cloud_event
def hop(cloud_event: CloudEvent) -> None:
    """Republish the message's attributes to the next topic, stamped with the time it arrived."""
    received = time.time()
    attributes = dict(cloud_event.data["message"].get("attributes") or {})
    attributes["bench-time"] = f"{received:.6f}"
    _publisher().publish(_topic(), b"{}", **attributes).result(timeout=30)
