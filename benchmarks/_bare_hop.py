"""The bare hop: a functions-framework CloudEvent function that republishes what it receives, and nothing else.

Served as ``python -m functions_framework --source benchmarks/_bare_hop.py --target hop --signature-type
cloudevent`` behind two push subscriptions, on the bench's first topic and on ``BENCH_HOP_SECOND``. A
message's ``bench-leg`` says which it came through: leg 1 is stamped ``bench-t1`` and republished to
``BENCH_HOP_SECOND``; leg 2 is stamped ``bench-t2`` and republished to ``BENCH_HOP_OUT``, where the bench reads the
stamps. Leg 2 is a hop as a cd4ml stage sees one: an event made inside a push handler, published, pushed to
the next function. The publisher is cd4ml's (one message a batch).

The emulator pushes from one loop per subscription that sleeps ~100 ms whenever it finds nothing, so its
grid of checks is anchored at its last push. Samples that follow each other would keep the second
subscription's grid at a fixed offset from the first leg, and leg 2 would measure that offset rather than
a hop; leg 1 therefore waits a random 0–100 ms before it stamps, as the varying work of a real stage does.
"""

from __future__ import annotations

import functools
import os
import random
import time
from typing import Any

import functions_framework
from cloudevents.http import CloudEvent


@functools.cache
def _publisher() -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))


@functions_framework.cloud_event
def hop(cloud_event: CloudEvent) -> None:
    """Stamp the leg's arrival and republish the message's attributes to the next topic."""
    attributes = dict(cloud_event.data["message"].get("attributes") or {})
    leg = attributes.get("bench-leg", "1")
    if leg == "1":
        time.sleep(random.uniform(0.0, 0.1))
    attributes[f"bench-t{leg}"] = f"{time.time():.6f}"
    if leg == "1":
        attributes["bench-leg"] = "2"
        topic = os.environ["BENCH_HOP_SECOND"]
    else:
        topic = os.environ["BENCH_HOP_OUT"]
    _publisher().publish(topic, b"{}", **attributes).result(timeout=30)
