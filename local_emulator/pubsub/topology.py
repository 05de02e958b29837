"""The Pub/Sub graph the local stack creates, derived from the catalog (Terraform derives the same)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cd4ml.catalog import Catalog, dead_letter_hold, dead_letter_topic
from local_emulator.pubsub import push as pubsub_push


@dataclass(frozen=True)
class Subscription:
    """A subscription: push to a stage, or a pull hold that keeps dead-lettered messages."""

    name: str
    topic: str
    stage: str | None
    dead_letter_topic: str | None
    max_delivery_attempts: int | None
    minimum_backoff_seconds: int | None
    maximum_backoff_seconds: int | None
    ack_deadline_seconds: int
    retention_seconds: int | None


@dataclass(frozen=True)
class Topology:
    """Topics, subscriptions and each stage's environment variable names."""

    topics: tuple[str, ...]
    subscriptions: tuple[Subscription, ...]
    stage_env: dict[str, tuple[str, ...]]


def stage_env_names(cat: Catalog, stage: str) -> tuple[str, ...]:
    """The variables a stage's process gets: its catalog list plus its name and dead-letter topic."""
    return tuple(sorted({*cat.stage(stage).env, "CD4ML_STAGE", "CD4ML_DEAD_LETTER_TOPIC"}))


def plan(cat: Catalog) -> Topology:
    """The topics and subscriptions of a deployment of ``cat``."""
    d = cat.delivery
    subs: list[Subscription] = []
    for stage in cat.stages:
        subs.extend(
            Subscription(
                name=name,
                topic=topic,
                stage=stage.name,
                dead_letter_topic=dead_letter_topic(stage.name),
                max_delivery_attempts=d.max_delivery_attempts,
                minimum_backoff_seconds=d.minimum_backoff_seconds,
                maximum_backoff_seconds=d.maximum_backoff_seconds,
                ack_deadline_seconds=d.ack_deadline_seconds,
                retention_seconds=None,
            )
            for name, topic in stage.subscriptions
        )
        subs.append(
            Subscription(
                name=dead_letter_hold(stage.name),
                topic=dead_letter_topic(stage.name),
                stage=None,
                dead_letter_topic=None,
                max_delivery_attempts=None,
                minimum_backoff_seconds=None,
                maximum_backoff_seconds=None,
                ack_deadline_seconds=60,
                retention_seconds=d.dead_letter_retention_seconds,
            )
        )
    return Topology(
        topics=cat.topics,
        subscriptions=tuple(subs),
        stage_env={s.name: stage_env_names(cat, s.name) for s in cat.stages},
    )


def create_topics(project: str, topology: Topology) -> None:
    """Create every topic of ``topology`` on the Pub/Sub emulator (PUBSUB_EMULATOR_HOST)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for topic in topology.topics:
        publisher.create_topic(name=publisher.topic_path(project, topic))


def route(project: str, sub: Subscription, function_url: str) -> pubsub_push.Route:
    """The push route of a stage subscription: Terraform's push endpoint (``terraform/pubsub.tf``:
    ``FUNCTION_URL/projects/P/topics/T``, the path that makes functions-framework unwrap the push) and the
    catalog's retry policy."""
    return pubsub_push.Route(
        subscription=f"projects/{project}/subscriptions/{sub.name}",
        endpoint=f"{function_url}/projects/{project}/topics/{sub.topic}",
        minimum_backoff_seconds=float(sub.minimum_backoff_seconds or 10),
        maximum_backoff_seconds=float(sub.maximum_backoff_seconds or 600),
        ack_deadline_seconds=sub.ack_deadline_seconds,
    )


def subscribe(project: str, topology: Topology, functions: Mapping[str, str], routes: Path) -> None:
    """Create the subscriptions: each stage's with the catalog's dead-letter policy, pushed to its ``functions``
    URL with the catalog's retry policy by ``local_emulator.pubsub.push`` (the route is added to ``routes``; the
    emulator's own push parks failed messages for good, see there), and the holds of dead-lettered messages.

    The path /projects/P/topics/T makes functions-framework unwrap the push."""
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2

    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    pushed: list[pubsub_push.Route] = []
    for sub in topology.subscriptions:
        name = subscriber.subscription_path(project, sub.name)
        request: dict[str, Any] = {
            "name": name,
            "topic": publisher.topic_path(project, sub.topic),
            "ack_deadline_seconds": sub.ack_deadline_seconds,
        }
        if sub.stage is not None:
            request["dead_letter_policy"] = {
                "dead_letter_topic": publisher.topic_path(project, str(sub.dead_letter_topic)),
                "max_delivery_attempts": sub.max_delivery_attempts,
            }
            pushed.append(route(project, sub, functions[sub.stage]))
        else:
            request["message_retention_duration"] = duration_pb2.Duration(seconds=sub.retention_seconds)
            request["retain_acked_messages"] = True  # looking at a dead letter must not lose it
        subscriber.create_subscription(request=request)
    pubsub_push.add_routes(routes, pushed)
