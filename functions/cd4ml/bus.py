"""Publishing: cd4ml events to their topics, rejected messages to the stage's dead-letter topic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cd4ml import catalog, clients
from cd4ml.events import Event, PubSubMessage

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

PUBLISH_TIMEOUT_SECONDS = 30.0


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

    def dead_letter(self, topic: str, message: PubSubMessage, *, stage: str, error: str) -> str:
        """Copy a rejected message, data and attributes intact, to ``topic`` with the reason attached."""
        attributes = dict(message.attributes)
        attributes.update({
            "cd4ml-rejected-by": stage,
            "cd4ml-error": error[:1000],
            "cd4ml-original-message-id": message.message_id,
        })
        if message.subscription:
            attributes["cd4ml-original-subscription"] = message.subscription
        future = self.publisher.publish(self.topic_path(topic), message.data, **attributes)
        return str(future.result(timeout=PUBLISH_TIMEOUT_SECONDS))
