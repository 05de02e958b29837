"""The storage proxy's Cloud Storage notifications: the configs it accepts or refuses, and the messages it publishes.

Sources: https://cloud.google.com/storage/docs/json_api/v1/notifications (the resource: topic form, payload_format
JSON_API_V1 | NONE, event types) and https://cloud.google.com/storage/docs/pubsub-notifications (the attributes).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from local_emulator.iam import policy as iam_policy
from local_emulator.storage.notifications import Notifications, message

PROJECT, DATA = "cd4ml-local", "cd4ml-local-data"
TOPIC = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/cd4ml-data-arrivals"


class _Recorded(Notifications):
    """The store and its rules, with Pub/Sub replaced by a list (the topics that exist are given)."""

    def __init__(self, topics: set[str]) -> None:
        super().__init__("127.0.0.1:1", iam_policy.load(PROJECT, DATA, "cd4ml-local-artifacts"))
        self.topics = topics
        self.published: list[tuple[str, dict[str, Any]]] = []

    def _topic_exists(self, project: str, topic: str) -> bool:
        return topic in self.topics

    def _publish(self, config: Any, body: Any) -> None:
        self.published.append((config["topic"], body))


def _insert(store: Notifications, **config: Any) -> tuple[int, Any]:
    body = {"topic": TOPIC, "payload_format": "JSON_API_V1", "event_types": ["OBJECT_FINALIZE"], **config}
    return store.api("POST", f"/storage/v1/b/{DATA}/notificationConfigs", json.dumps(body).encode())


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"topic": "projects/p/topics/t"}, "//pubsub.googleapis.com/projects/PROJECT/topics/TOPIC"),
        ({"payload_format": "JSON"}, "payload_format"),
        ({"event_types": ["OBJECT_CREATE"]}, "OBJECT_CREATE"),
    ],
)
def test_a_malformed_config_is_refused_naming_the_field(config: dict[str, Any], reason: str) -> None:
    status, answer = _insert(_Recorded({"cd4ml-data-arrivals"}), **config)
    assert status == 400 and reason in answer["error"]["message"]


def test_a_missing_topic_or_one_the_storage_agent_may_not_publish_to_is_refused() -> None:
    status, answer = _insert(_Recorded(set()))
    assert status == 400 and "not found" in answer["error"]["message"]
    other = f"//pubsub.googleapis.com/projects/{PROJECT}/topics/cd4ml-run-requested-v1"
    status, answer = _insert(_Recorded({"cd4ml-run-requested-v1"}), topic=other)
    assert status == 403 and "does not have permission to publish" in answer["error"]["message"]


def test_a_finalized_object_is_published_as_cloud_storage_does_and_only_where_configured() -> None:
    store = _Recorded({"cd4ml-data-arrivals"})
    status, config = _insert(store, object_name_prefix="sources/", custom_attributes={"team": "ml"})
    assert status == 200 and config["kind"] == "storage#notification"
    resource = {
        "kind": "storage#object",
        "bucket": DATA,
        "name": "sources/digits/b.csv",
        "generation": "17",
        "updated": "2030-01-01T12:00:00.250Z",
    }
    store.finalized(resource)
    store.finalized({**resource, "name": "datasets/x"})  # outside the prefix
    store.finalized({**resource, "bucket": "another"})  # a bucket without a config
    [(topic, body)] = store.published
    assert topic == TOPIC
    assert body["attributes"] == {
        "team": "ml",
        "notificationConfig": f"projects/_/buckets/{DATA}/notificationConfigs/{config['id']}",
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": DATA,
        "objectId": "sources/digits/b.csv",
        "objectGeneration": "17",
        "eventTime": "2030-01-01T12:00:00.250Z",
    }
    assert json.loads(base64.b64decode(body["data"])) == resource
    status, listed = store.api("GET", f"/storage/v1/b/{DATA}/notificationConfigs", b"")
    assert status == 200 and listed is not None and [c["id"] for c in listed["items"]] == [config["id"]]


def test_payload_none_publishes_attributes_only() -> None:
    config = {"id": "1", "payload_format": "NONE", "custom_attributes": {}}
    body = message(config, "OBJECT_FINALIZE", {"bucket": DATA, "name": "a", "generation": "1", "updated": "t"})
    assert "data" not in body and body["attributes"]["payloadFormat"] == "NONE"
