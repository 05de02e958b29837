"""Publishing: cd4ml events to their topics, rejected messages to the stage's dead-letter topic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cd4ml import catalog, clients
from cd4ml.events import Event, PubSubMessage
from cd4ml.limits import MAX_ATTRIBUTES, MAX_VALUE_BYTES, bounded

__all__ = ["MAX_ATTRIBUTES", "MAX_ATTRIBUTE_VALUE_BYTES", "PUBLISH_TIMEOUT_SECONDS", "Bus", "bounded"]

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

PUBLISH_TIMEOUT_SECONDS = 30.0
MAX_ATTRIBUTE_VALUE_BYTES = MAX_VALUE_BYTES


class Bus:
    """Publishes to the project's topics; a failed publish raises, so the caller's message is retried."""

    def __init__(self, project: str, publisher: pubsub_v1.PublisherClient | None = None) -> None:
        self._project = project
        self._publisher = publisher

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        if self._publisher is None:
            self._publisher = clients.publisher_client()
        return self._publisher

    def topic_path(self, topic: str) -> str:
        return f"projects/{self._project}/topics/{topic}"

    def publish(self, event: Event) -> str:
        """Publish ``event`` to the topic of its type; returns the message id."""
        data, attributes = event.to_message()
        future = self.publisher.publish(self.topic_path(catalog.topic_id(event.type)), data, **attributes)
        return str(future.result(timeout=PUBLISH_TIMEOUT_SECONDS))

    def dead_letter(
        self, topic: str, message: PubSubMessage, *, stage: str, error: str, exhausted: bool = False
    ) -> str:
        """Copy a rejected message to ``topic`` with the reason attached, within Pub/Sub's limits.

        Pub/Sub refuses more than 100 attributes and attribute values over 1024 bytes
        (https://cloud.google.com/pubsub/quotas#resource_limits): the reason is cut to fit, and when the
        original carries too many attributes the ``ce-*`` ones are kept first and the count dropped is noted.
        A message whose deliveries were ``exhausted`` is marked ``cd4ml-exhausted-by`` instead of rejected.
        """
        ours = {
            "cd4ml-exhausted-by" if exhausted else "cd4ml-rejected-by": stage,
            "cd4ml-error": bounded(error, MAX_ATTRIBUTE_VALUE_BYTES),
            "cd4ml-original-message-id": bounded(message.message_id, MAX_ATTRIBUTE_VALUE_BYTES),
        }
        if message.subscription:
            ours["cd4ml-original-subscription"] = bounded(message.subscription, MAX_ATTRIBUTE_VALUE_BYTES)
        room = MAX_ATTRIBUTES - len(ours) - 1
        originals = sorted(message.attributes.items(), key=lambda kv: (not kv[0].startswith("ce-"), kv[0]))
        kept = dict(originals[:room])
        if len(originals) > room:
            ours["cd4ml-dropped-attributes"] = str(len(originals) - room)
        future = self.publisher.publish(self.topic_path(topic), message.data, **kept, **ours)
        return str(future.result(timeout=PUBLISH_TIMEOUT_SECONDS))
