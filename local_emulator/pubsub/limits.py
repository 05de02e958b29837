"""Pub/Sub's publish limits, which the emulator does not enforce: the first violation, worded as Pub/Sub words it.

Limits: https://cloud.google.com/pubsub/quotas#resource_limits ("Publish request: 10 MB total size, 1,000
messages; attributes per message 100; attribute key size 256 bytes; attribute value size 1024 bytes"), and
google.pubsub.v1.PubsubMessage (pubsub.proto): "The message must contain either a non-empty data field or at
least one attribute."
"""

from __future__ import annotations

from typing import Any

QUOTAS = "Refer to https://cloud.google.com/pubsub/quotas for more information."
MAX_REQUEST_BYTES = 10 * 1024 * 1024  # Pub/Sub's answer names 10485760 bytes (apache/beam#23022)
MAX_MESSAGES = 1000
MAX_ATTRIBUTES = 100
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024


def publish_problem(request: Any, request_bytes: int) -> str | None:
    """Why Pub/Sub would answer INVALID_ARGUMENT to this google.pubsub.v1.PublishRequest, or None."""
    if request_bytes > MAX_REQUEST_BYTES:
        # Wording seen from Pub/Sub: apache/beam#23022.
        return f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
    if len(request.messages) > MAX_MESSAGES:
        # Pub/Sub's own wording swaps the two values (googleapis/google-cloud-java#4757); here they are in place.
        return (
            f"The value for message_count is too large. You passed {len(request.messages)} in the request, "
            f"but the maximum value is {MAX_MESSAGES}."
        )
    for message in request.messages:
        if not message.data and not message.attributes:
            # pubsub.proto, PubsubMessage (the wording is ours: no answer of Pub/Sub's to this was found to copy).
            return (
                "One or more messages in the publish request is empty. Each message must contain either "
                "non-empty data, or at least one attribute."
            )
        if len(message.attributes) > MAX_ATTRIBUTES:  # wording ours, in the style of the two below
            return (
                f"The message has {len(message.attributes)} attributes, but the maximum allowed is "
                f"{MAX_ATTRIBUTES}. {QUOTAS}"
            )
        for key, value in message.attributes.items():
            key_bytes, value_bytes = len(key.encode()), len(value.encode())
            if key_bytes > MAX_KEY_BYTES:
                # Pub/Sub does not echo a too-long key (googleapis/java-pubsub#2312); it counts bytes.
                return (
                    f'The attribute "" in the request has a key that is too long. The length is {key_bytes} '
                    f"characters, but the maximum allowed is {MAX_KEY_BYTES}. {QUOTAS}"
                )
            if value_bytes > MAX_VALUE_BYTES:
                # snowplow/enrich#485, googleapis/google-cloud-python#7906 (bytes: apache/beam#23022).
                return (
                    f'The attribute "{key}" in the request has a value that is too long. The length is '
                    f"{value_bytes} characters, but the maximum allowed is {MAX_VALUE_BYTES}. {QUOTAS}"
                )
    return None
