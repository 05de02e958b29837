"""Cloud Storage's Pub/Sub notifications, which gcp-storage-emulator lacks: the notificationConfigs API of a bucket
and, for every object a write finalizes through the storage proxy, the message Cloud Storage publishes.

Sources: the notifications resource and its methods (https://cloud.google.com/storage/docs/json_api/v1/notifications:
``topic`` as ``//pubsub.googleapis.com/projects/P/topics/T``, ``payload_format`` JSON_API_V1 | NONE, ``event_types``,
``object_name_prefix``, ``custom_attributes``; kind ``storage#notification``) and the message format
(https://cloud.google.com/storage/docs/pubsub-notifications: attributes ``notificationConfig``, ``eventType``,
``payloadFormat``, ``bucketId``, ``objectId``, ``objectGeneration``, ``eventTime``, plus the custom attributes; with
JSON_API_V1 the data is the object resource as JSON). Cloud Storage publishes as its service agent, which needs
``pubsub.publisher`` on the topic (reporting-changes#prereqs): a config whose topic the agent may not publish to
(iam_bindings.yaml, member ``storage_agent``) is refused when it is created, as is one whose topic does not exist.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from local_emulator.iam.policy import Policy

EVENT_TYPES = ("OBJECT_FINALIZE", "OBJECT_METADATA_UPDATE", "OBJECT_DELETE", "OBJECT_ARCHIVE")
PAYLOADS = ("JSON_API_V1", "NONE")
AGENT = "storage_agent"
_CONFIGS = re.compile(r"^/storage/v1/b/(?P<bucket>[^/]+)/notificationConfigs(?:/(?P<id>[^/?]+))?$")
_TOPIC = re.compile(r"^//pubsub\.googleapis\.com/projects/(?P<project>[^/]+)/topics/(?P<topic>[^/]+)$")


def is_config_path(path: str) -> bool:
    return bool(_CONFIGS.match(path))


class Notifications:
    """The notification configs of every bucket (in memory, like the emulator's objects) and their publisher."""

    def __init__(self, pubsub_upstream: str, policy: Policy) -> None:
        host, _, port = pubsub_upstream.rpartition(":")
        self._pubsub = (host or "127.0.0.1", int(port))
        self._policy = policy
        self._configs: dict[str, dict[str, dict[str, Any]]] = {}
        self._next = 0
        self._lock = threading.Lock()

    # --- the notificationConfigs API -----------------------------------------------------------------------------

    def api(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
        """(status, JSON body) of a notificationConfigs call: insert, list, get, delete."""
        match = _CONFIGS.match(path)
        assert match is not None
        bucket, config_id = match["bucket"], match["id"]
        with self._lock:
            configs = self._configs.setdefault(bucket, {})
            if method == "POST" and config_id is None:
                return self._insert(bucket, configs, body)
            if method == "GET" and config_id is None:
                return 200, {"kind": "storage#notifications", "items": list(configs.values())}
            if config_id not in configs:
                return 404, _error(404, f"No such notification configuration {config_id} on bucket {bucket}.")
            if method == "GET":
                return 200, configs[config_id]
            if method == "DELETE":
                del configs[config_id]
                return 204, None
        return 405, _error(405, f"{method} is not a notificationConfigs method")

    def _insert(self, bucket: str, configs: dict[str, dict[str, Any]], body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return 400, _error(400, "Parse Error")
        topic = _TOPIC.match(str(request.get("topic", "")))
        problems = [
            *([] if topic else ["topic must be //pubsub.googleapis.com/projects/PROJECT/topics/TOPIC"]),
            *([] if request.get("payload_format") in PAYLOADS else [f"payload_format must be one of {PAYLOADS}"]),
            *[f"unknown event type {e!r}" for e in request.get("event_types") or () if e not in EVENT_TYPES],
        ]
        if problems:
            return 400, _error(400, "Invalid argument: " + "; ".join(problems))
        assert topic is not None
        if not self._topic_exists(topic["project"], topic["topic"]):
            return 400, _error(400, f"Cloud Pub/Sub topic {topic['topic']} not found in project {topic['project']}.")
        if not self._policy.allows_topic(AGENT, "pubsub.topics.publish", topic["topic"]):
            agent = self._policy.principal(AGENT)
            return 403, _error(403, f"{agent} does not have permission to publish messages to {topic['topic']}.")
        self._next += 1
        config = {
            "kind": "storage#notification",
            "id": str(self._next),
            "topic": request["topic"],
            "payload_format": request["payload_format"],
            "event_types": list(request.get("event_types") or ()),
            "custom_attributes": dict(request.get("custom_attributes") or {}),
            "object_name_prefix": str(request.get("object_name_prefix", "")),
            "etag": str(self._next),
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}/notificationConfigs/{self._next}",
        }
        configs[config["id"]] = config
        return 200, config

    # --- what a write publishes ------------------------------------------------------------------------------------

    def finalized(self, resource: Mapping[str, Any]) -> None:
        """Publish OBJECT_FINALIZE for the object resource a completed upload returned, to every matching config."""
        bucket, name = str(resource.get("bucket", "")), str(resource.get("name", ""))
        with self._lock:
            configs = list(self._configs.get(bucket, {}).values())
        for config in configs:
            if config["event_types"] and "OBJECT_FINALIZE" not in config["event_types"]:
                continue
            if not name.startswith(config["object_name_prefix"]):
                continue
            self._publish(config, message(config, "OBJECT_FINALIZE", resource))

    def _publish(self, config: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        topic = _TOPIC.match(config["topic"])
        assert topic is not None
        path = f"/v1/projects/{topic['project']}/topics/{topic['topic']}:publish"
        _call(self._pubsub, "POST", path, {"messages": [body]})

    def _topic_exists(self, project: str, topic: str) -> bool:
        return _call(self._pubsub, "GET", f"/v1/projects/{project}/topics/{topic}", None) == 200


def message(config: Mapping[str, Any], event_type: str, resource: Mapping[str, Any]) -> dict[str, Any]:
    """The Pub/Sub message (REST form) Cloud Storage publishes for ``event_type`` on the object ``resource``."""
    attributes = {
        **config["custom_attributes"],
        "notificationConfig": f"projects/_/buckets/{resource['bucket']}/notificationConfigs/{config['id']}",
        "eventType": event_type,
        "payloadFormat": config["payload_format"],
        "bucketId": str(resource["bucket"]),
        "objectId": str(resource["name"]),
        "objectGeneration": str(resource.get("generation", "")),
        "eventTime": str(resource.get("updated") or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    }
    body: dict[str, Any] = {"attributes": attributes}
    if config["payload_format"] == "JSON_API_V1":
        body["data"] = base64.b64encode(json.dumps(resource).encode()).decode()
    return body


def _call(address: tuple[str, int], method: str, path: str, body: Any) -> int:
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _error(code: int, text: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": text, "errors": [{"message": text, "domain": "global"}]}}
