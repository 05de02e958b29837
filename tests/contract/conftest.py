"""Contract tests: each handler driven in-process through functions_framework.create_app.

They use their own project on the stack's emulators (no push subscriptions), so what a handler emits
stays in its topic for the test to pull, and what it rejects lands in its dead-letter topic.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cd4ml import catalog, runtime

GOLDEN = Path(__file__).parent / "golden"
PROJECT = "cd4ml-contract"
DATA, ARTIFACTS = "cd4ml-contract-data", "cd4ml-contract-artifacts"


def golden(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text())
    return result


@dataclass
class Contract:
    """Post push bodies to a stage's app; pull what it published."""

    stack: Any
    apps: dict[str, Any] = field(default_factory=dict)

    def post(self, stage: str, body: dict[str, Any], topic: str) -> Any:
        from functions_framework import create_app

        os.environ["CD4ML_STAGE"] = stage
        os.environ["CD4ML_DEAD_LETTER_TOPIC"] = catalog.dead_letter_topic(stage)
        runtime.context.cache_clear()
        if stage not in self.apps:
            main = Path(__file__).resolve().parents[2] / "functions" / "main.py"
            self.apps[stage] = create_app(stage, str(main), "cloudevent").test_client()  # type: ignore[no-untyped-call]
        return self.apps[stage].post(f"/projects/{PROJECT}/topics/{topic}", json=body)

    def pull(self, topic: str, wait: float = 5.0) -> list[Any]:
        """Messages published to ``topic`` since the last pull."""
        from google.cloud import pubsub_v1

        subscriber = pubsub_v1.SubscriberClient()
        path = subscriber.subscription_path(PROJECT, f"observe-{topic}")
        deadline = time.monotonic() + wait
        received: list[Any] = []
        while time.monotonic() < deadline:
            response = subscriber.pull(request={"subscription": path, "max_messages": 50}, timeout=5)
            if response.received_messages:
                received += [m.message for m in response.received_messages]
                subscriber.acknowledge(
                    request={"subscription": path, "ack_ids": [m.ack_id for m in response.received_messages]}
                )
                break
            time.sleep(0.2)
        return received

    def run(self, run_id: str) -> dict[str, Any] | None:
        return runtime.context().ledger.get(run_id)


@pytest.fixture(scope="session")
def contract(services: Any) -> Iterator[Contract]:
    from cd4ml_models import folder as models
    from google.cloud import pubsub_v1
    from local_emulator import stack as local

    from cd4ml import clients
    from cd4ml.settings import Settings

    saved = dict(os.environ)
    os.environ.update(local.client_env(services))
    os.environ.update(
        {
            "CD4ML_PROJECT": PROJECT,
            "CD4ML_DATA_BUCKET": DATA,
            "CD4ML_ARTIFACT_BUCKET": ARTIFACTS,
            "GOOGLE_CLOUD_PROJECT": PROJECT,
        }
    )
    storage = clients.storage_client(Settings.from_env())
    for bucket in (DATA, ARTIFACTS):
        storage.create_bucket(bucket)
    models.push(storage, local.REPO / "examples" / "digits", ARTIFACTS)
    storage.bucket(DATA).blob("sources/digits/digits.csv").upload_from_string("pixel_0,label\n1,0\n2,1\n")
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    for topic in catalog.load().topics:
        publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
        subscriber.create_subscription(
            name=subscriber.subscription_path(PROJECT, f"observe-{topic}"), topic=publisher.topic_path(PROJECT, topic)
        )
    from cd4ml import logs

    logs.configure()
    logging.getLogger("cd4ml").propagate = True  # so caplog sees what the handlers log
    try:
        yield Contract(services)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        runtime.context.cache_clear()
