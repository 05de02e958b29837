"""``cd4ml dead-letters`` lists every held message, page by page, whatever its size, and leaves them held.

Starts only the Pub/Sub emulator.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cd4ml_cli.deadletters import held_messages
from cd4ml_cli.deadletters import subscriber as _subscriber
from local_emulator import stack as local
from local_emulator.common import processes

PUBSUB_EMULATOR = local.GCLOUD_PLATFORM / "pubsub-emulator/bin/cloud-pubsub-emulator"
pytestmark = pytest.mark.skipif(not PUBSUB_EMULATOR.exists(), reason="needs the gcloud Pub/Sub emulator")


@pytest.fixture(scope="module")
def pubsub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    argv = lambda port: [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={port}"]  # noqa: E731
    saved = os.environ.get("PUBSUB_EMULATOR_HOST")
    with processes.serving("pubsub", argv, tmp_path_factory.mktemp("pubsub-logs")) as host:
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        try:
            yield host
        finally:
            if saved is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = saved


def test_every_held_message_is_listed_and_stays_held_even_a_large_one(pubsub: str) -> None:
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), _subscriber()
    topic = publisher.topic_path("cd4ml-dl", "cd4ml-evaluate-dead-letter")
    hold = subscriber.subscription_path("cd4ml-dl", "cd4ml-evaluate-dead-letter-hold")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(request={"name": hold, "topic": topic, "retain_acked_messages": True})
    futures = [publisher.publish(topic, f"bad {i}".encode(), **{"cd4ml-error": f"reason {i}"}) for i in range(230)]
    futures.append(publisher.publish(topic, b"x" * (6 * 1024 * 1024), **{"cd4ml-error": "too big to list before"}))
    for future in futures:
        future.result(timeout=30)
    first = held_messages(subscriber, hold)
    assert len(first) == 231
    assert any(len(r.message.data) == 6 * 1024 * 1024 for r in first)
    again = held_messages(subscriber, hold)  # looking consumed nothing
    assert sorted(r.message.message_id for r in again) == sorted(r.message.message_id for r in first)


def test_an_empty_listing_of_every_stage_answers_within_5_s(pubsub: str) -> None:
    """Each empty hold used to cost a 3 s pull, one stage after the other: ~80 s for nothing held."""
    import time

    from cd4ml_cli.deadletters import held_by_stage
    from google.cloud import pubsub_v1

    from cd4ml import catalog

    publisher, subscriber = pubsub_v1.PublisherClient(), _subscriber()
    stages = [s.name for s in catalog.load().stages]
    for stage in stages:
        topic = publisher.topic_path("cd4ml-empty", catalog.dead_letter_topic(stage))
        publisher.create_topic(name=topic)
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path("cd4ml-empty", catalog.dead_letter_hold(stage)),
                "topic": topic,
            }
        )
    started = time.monotonic()
    held = held_by_stage(subscriber, "cd4ml-empty", stages)
    assert time.monotonic() - started <= 5.0
    assert list(held) == stages and all(messages == [] for messages in held.values())
