"""Publishing: cd4ml events to their topics, rejected messages to the stage's dead-letter topic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cd4ml import catalog, clients
from cd4ml.errors import DeadLetterRefused
from cd4ml.events import Event, PubSubMessage
from cd4ml.limits import MAX_ATTRIBUTES, MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_VALUE_BYTES, bounded, room_for_data

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

        Pub/Sub refuses more than 100 attributes, keys over 256 bytes, values over 1024 bytes and requests over
        10 MB (https://cloud.google.com/pubsub/quotas#resource_limits): the reason keeps its words and cuts its
        quoted values (``limits.bounded``); when the original carries too many attributes the ``ce-*`` ones are kept
        first and the count dropped is noted (``cd4ml-dropped-attributes``, keys over the limit counted there too,
        values over it cut); data that would take the request over 10 MB is cut to fit and says so
        (``cd4ml-data-truncated``). A message whose deliveries were ``exhausted`` is marked ``cd4ml-exhausted-by``
        instead of rejected. A copy Pub/Sub still refuses raises DeadLetterRefused with Pub/Sub's words.
        """
        from google.api_core import exceptions

        ours = {
            "cd4ml-exhausted-by" if exhausted else "cd4ml-rejected-by": stage,
            "cd4ml-error": bounded(error, MAX_VALUE_BYTES),
            "cd4ml-original-message-id": bounded(message.message_id, MAX_VALUE_BYTES),
        }
        if message.subscription:
            ours["cd4ml-original-subscription"] = bounded(message.subscription, MAX_VALUE_BYTES)
        room = MAX_ATTRIBUTES - len(ours) - 2  # and the two notes below
        fitting = [(k, v) for k, v in message.attributes.items() if len(k.encode()) <= MAX_KEY_BYTES]
        originals = sorted(fitting, key=lambda kv: (not kv[0].startswith("ce-"), kv[0]))
        kept = {k: bounded(v, MAX_VALUE_BYTES) for k, v in originals[:room]}
        if len(message.attributes) > len(kept):
            ours["cd4ml-dropped-attributes"] = str(len(message.attributes) - len(kept))
        path = self.topic_path(topic)
        data = message.data
        fits = room_for_data({**kept, **ours, _TRUNCATED: "x" * 120}, path)
        if len(data) > fits:
            data = data[:fits]
            ours[_TRUNCATED] = (
                f"data cut from {len(message.data)} to {len(data)} bytes to fit Pub/Sub's {MAX_REQUEST_BYTES}-byte "
                "publish request"
            )
        try:
            future = self.publisher.publish(path, data, **kept, **ours)
            return str(future.result(timeout=PUBLISH_TIMEOUT_SECONDS))
        except exceptions.InvalidArgument as refused:
            raise DeadLetterRefused(
                f"the dead-letter copy of message {bounded(message.message_id, 100)!r} was refused by Pub/Sub: "
                f"{bounded(refused.message, 600)}"
            ) from refused


#: The attribute saying a dead letter's data was cut.
_TRUNCATED = "cd4ml-data-truncated"
