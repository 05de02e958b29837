"""The bad inputs the chaos session sends, each with the one reason it must be answered with.

Four levels, as issue 10 lists them: the Pub/Sub message (attributes, type, data, schema, size, model and run),
the HTTP request (posted straight to a function), Google's own formats (``cloud-builds``, ``gcr``); the model
level (a broken manifest, trainer or Dockerfile) is in ``models.py``. A case is *handled* when its reason is
found where the user looks: in ``cd4ml-error`` of the stage's dead-letter copy and in the stage's log (a
"dead-letter" case), in the stage's log alone for what is rightly ignored (an "ignored" case), or in the HTTP
answer for a request that never reaches a handler (an "http" case).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from local_emulator.scheduler import scheduler_attributes

from benchmarks.pipeline import SOURCE, Pipeline
from cd4ml import catalog, events
from cd4ml.events import Event, format_time, now

Deliver = Callable[["Sender"], str]


@dataclass(frozen=True)
class Case:
    """One bad input: how to send it, the stage that meets it, and the words its reason must contain."""

    kind: str
    level: str
    stage: str
    expect: str  # "dead-letter", "ignored" or "http"
    reason: str
    deliver: Deliver


@dataclass
class Sender:
    """Sends bad inputs into the running stack; ``live`` is a run that is running, ``ended`` one that ended."""

    pipeline: Pipeline
    model: str
    live: str = ""
    ended: str = ""
    answers: dict[str, str] = field(default_factory=dict)

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        future = self.pipeline.bus.publisher.publish(self.pipeline.bus.topic_path(topic), data, **attributes)
        return str(future.result(timeout=30))

    def event(
        self, type_: str, subject: str, data: Mapping[str, Any], topic_type: str | None = None, **override: str
    ) -> str:
        """A well-formed event of ``type_`` (published on ``topic_type``'s topic), attributes overridden."""
        body, attributes = Event.new(type_, subject, data, source=SOURCE, id=str(uuid.uuid4())).to_message()
        attributes.update(override)
        return self.publish(catalog.topic_id(topic_type or type_), body, {k: v for k, v in attributes.items() if v})

    def raw(self, type_: str, data: bytes, **attributes: str) -> str:
        base = {
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-source": SOURCE,
            "ce-type": type_,
            "content-type": "application/json",
            "ce-subject": self.live,
        }
        base.update(attributes)
        return self.publish(catalog.topic_id(type_), data, {k: v for k, v in base.items() if v})

    def post(self, stage: str, body: bytes, method: str = "POST") -> str:
        """Straight to the function's URL, as an attacker or a misconfigured caller would; the answer is kept."""
        key = str(uuid.uuid4().int % 10**16)
        topic = catalog.load().stage(stage).trigger_topic
        url = f"{self.pipeline.stack.endpoints['functions'][stage]}/projects/{self.pipeline.settings.project}/topics/{topic}"
        request = urllib.request.Request(
            url, data=body if method == "POST" else None, method=method, headers={"Content-Type": "application/json"}
        )
        for _ in range(5):  # a caller retries a 503 (the storm's crashes kill the instance now and then)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    self.answers[key] = f"HTTP {response.status} {response.read()[:300]!r}"
            except urllib.error.HTTPError as refused:
                self.answers[key] = f"HTTP {refused.code} {refused.read()[:300]!r}"
                if refused.code == 503:
                    time.sleep(1)
                    continue
            break
        return key

    def push_body(self, data: bytes, attributes: Mapping[str, str], message_id: str) -> bytes:
        return json.dumps(
            {
                "message": {
                    "data": base64.b64encode(data).decode(),
                    "attributes": dict(attributes),
                    "messageId": message_id,
                    "publishTime": format_time(now()),
                },
                "subscription": "projects/x/subscriptions/hand-made",
            }
        ).encode()


def _requested(s: Sender, **data: Any) -> bytes:
    return json.dumps({"model": s.model, "trigger": "manual"} | data).encode()


def _fetched(s: Sender) -> dict[str, Any]:
    return {
        "model": s.model,
        "dataset": {"uri": "gs://b/datasets/x/", "sha256": "0" * 64, "rows": 1, "bytes": 1, "files": 1},
    }


def _build(tags: list[str]) -> bytes:
    return json.dumps({"id": str(uuid.uuid4()), "status": "SUCCESS", "tags": tags, "images": []}).encode()


#: A manifest that `cd4ml model push` would refuse, put in the bucket by hand (as a stray upload would be).
INVALID_MANIFEST_MODEL = "chaos-invalid-manifest"


def _invalid_manifest(s: Sender) -> str:
    """Upload the good model's manifest with one fault (a direction that is not maximize|minimize), then request a run of its model."""
    import yaml

    from cd4ml import clients
    from cd4ml.manifest import manifest_object

    manifest = yaml.safe_load(s.pipeline.stack.root.joinpath("..", s.model, "manifest.yaml").read_text())
    manifest.update(name=INVALID_MANIFEST_MODEL, evaluation={**manifest["evaluation"], "direction": "up"})
    text = yaml.safe_dump(manifest, sort_keys=False)
    bucket = clients.storage_client(s.pipeline.settings).bucket(s.pipeline.settings.artifact_bucket)
    bucket.blob(manifest_object(INVALID_MANIFEST_MODEL)).upload_from_string(text, content_type="application/yaml")
    data = json.dumps({"model": INVALID_MANIFEST_MODEL, "trigger": "manual"}).encode()
    return s.raw(RR, data, **{"ce-subject": ""})


def _post_envelope(s: Sender, data: str) -> str:
    message_id = str(uuid.uuid4().int % 10**16)
    body = json.dumps(
        {
            "message": {"data": data, "messageId": message_id, "attributes": {}},
            "subscription": "projects/x/subscriptions/hand-made",
        }
    ).encode()
    s.post("evaluate", body)
    return message_id


RR, DF, TC = events.RUN_REQUESTED, events.DATA_FETCHED, events.TRAINING_COMPLETED
CASES: tuple[Case, ...] = (
    # --- the Pub/Sub message ---
    Case(
        "ce-specversion missing",
        "message",
        "evaluate",
        "dead-letter",
        "ce-specversion must be",
        lambda s: s.raw(TC, b"{}", **{"ce-specversion": ""}),
    ),
    Case(
        "ce-specversion wrong",
        "message",
        "evaluate",
        "dead-letter",
        "ce-specversion must be",
        lambda s: s.raw(TC, b"{}", **{"ce-specversion": "0.3"}),
    ),
    Case(
        "ce-type missing",
        "message",
        "fetch_data",
        "dead-letter",
        "ce-type is missing",
        lambda s: s.publish(catalog.topic_id(RR), _requested(s), {"ce-specversion": "1.0", "ce-source": SOURCE}),
    ),
    Case(
        "ce-type unknown",
        "message",
        "fetch_data",
        "dead-letter",
        "is not a cd4ml event type",
        lambda s: s.publish(
            catalog.topic_id(RR),
            _requested(s),
            {"ce-specversion": "1.0", "ce-source": SOURCE, "ce-type": "com.example.nothing.v1"},
        ),
    ),
    Case(
        "wrong type for the topic",
        "message",
        "fetch_data",
        "dead-letter",
        "is not handled here",
        lambda s: s.event(DF, s.live, _fetched(s), topic_type=RR),
    ),
    Case(
        "ce-source missing",
        "message",
        "evaluate",
        "dead-letter",
        "ce-source is missing",
        lambda s: s.raw(TC, b"{}", **{"ce-source": ""}),
    ),
    Case(
        "ce-time not a timestamp",
        "message",
        "evaluate",
        "dead-letter",
        "ce-time is not an RFC 3339",
        lambda s: s.raw(TC, b"{}", **{"ce-time": "yesterday"}),
    ),
    Case(
        "content-type not JSON",
        "message",
        "evaluate",
        "dead-letter",
        "content-type must be",
        lambda s: s.raw(TC, b"{}", **{"content-type": "text/plain"}),
    ),
    Case("data not JSON", "message", "evaluate", "dead-letter", "data is not JSON", lambda s: s.raw(TC, b"{not json")),
    Case(
        "data not UTF-8",
        "message",
        "evaluate",
        "dead-letter",
        "data is not JSON",
        lambda s: s.raw(TC, b'{"model": "\xff\xfe"}'),
    ),
    Case(
        "data a JSON list",
        "message",
        "evaluate",
        "dead-letter",
        "data must be a JSON object",
        lambda s: s.raw(TC, b"[1, 2]"),
    ),
    Case(
        "schema: required field missing",
        "message",
        "fetch_data",
        "dead-letter",
        "'model' is a required property",
        lambda s: s.raw(RR, b'{"trigger": "manual"}', **{"ce-subject": ""}),
    ),
    Case(
        "schema: field of the wrong type",
        "message",
        "submit_training",
        "dead-letter",
        "dataset/rows",
        lambda s: s.raw(
            DF, json.dumps({**_fetched(s), "dataset": {**_fetched(s)["dataset"], "rows": "many"}}).encode()
        ),
    ),
    Case(
        "oversized message (9 MB)",
        "message",
        "fetch_data",
        "dead-letter",
        "requested_by",
        lambda s: s.raw(RR, _requested(s, requested_by="x" * 9_000_000), **{"ce-subject": ""}),
    ),
    Case(
        "unknown model",
        "message",
        "fetch_data",
        "dead-letter",
        "unknown model",
        lambda s: s.raw(RR, json.dumps({"model": "no-such-model", "trigger": "manual"}).encode(), **{"ce-subject": ""}),
    ),
    Case(
        "ce-subject not a run id",
        "message",
        "submit_training",
        "dead-letter",
        "is not a run id",
        lambda s: s.event(DF, "../../etc/passwd", _fetched(s)),
    ),
    Case(
        "unknown run",
        "message",
        "submit_training",
        "dead-letter",
        "which the ledger does not know",
        lambda s: s.event(DF, f"{s.model}-20000101t000000z", _fetched(s)),
    ),
    Case(
        "ended run",
        "message",
        "submit_training",
        "ignored",
        "run already ended",
        lambda s: s.event(DF, s.ended, _fetched(s)),
    ),
    Case(
        "replayed request of an ended run",
        "message",
        "fetch_data",
        "ignored",
        "duplicate request ignored",
        lambda s: s.raw(
            RR,
            _requested(s, model=_model(s.ended), scheduled_time=_slot(s.ended)),  # the ended run's own request
            **{"ce-subject": s.ended},
        ),
    ),
    Case(
        "scheduled time outside the window",
        "message",
        "fetch_data",
        "dead-letter",
        "outside the accepted window",
        lambda s: s.raw(RR, _requested(s, scheduled_time="2001-01-01T00:00:00Z"), **{"ce-subject": ""}),
    ),
    Case(
        "scheduled time out of range",
        "message",
        "fetch_data",
        "dead-letter",
        "scheduled_time",
        lambda s: s.raw(RR, _requested(s, scheduled_time="9999-12-31T23:59:59Z"), **{"ce-subject": ""}),
    ),
    Case(
        "request naming the wrong run",
        "message",
        "fetch_data",
        "dead-letter",
        "names the wrong run",
        lambda s: s.raw(RR, _requested(s, scheduled_time=format_time(now())), **{"ce-subject": s.live}),
    ),
    Case(
        "scheduler message for an unknown model",
        "message",
        "fetch_data",
        "dead-letter",
        "unknown model",
        lambda s: s.publish(
            catalog.topic_id(RR),
            b'{"model": "ghost", "trigger": "schedule"}',
            scheduler_attributes(s.pipeline.settings.project, "cd4ml-ghost", RR),
        ),
    ),
    # --- the model: a manifest that fails validation (the trainer and Dockerfile faults are in models.py) ---
    Case(
        "a manifest that fails validation",
        "model",
        "fetch_data",
        "dead-letter",
        "evaluation.direction",
        _invalid_manifest,
    ),
    # --- HTTP, straight to a function ---
    Case(
        "HTTP body not a push envelope",
        "http",
        "evaluate",
        "http",
        "HTTP 400",
        lambda s: s.post("evaluate", b'{"hello": "world"}'),
    ),
    Case(
        "HTTP body not JSON", "http", "evaluate", "http", "HTTP 400", lambda s: s.post("evaluate", b"\x00\x01garbage")
    ),
    Case("HTTP GET", "http", "evaluate", "http", "HTTP 4", lambda s: s.post("evaluate", b"", method="GET")),
    Case(
        "HTTP envelope with data not base64",
        "http",
        "evaluate",
        "dead-letter",
        "message.data is not base64",
        lambda s: _post_envelope(s, "***not base64***"),
    ),
    # --- Google's formats ---
    Case(
        "Cloud Build message for an unknown run",
        "google",
        "on_build",
        "dead-letter",
        "which the ledger does not know",
        lambda s: s.publish(
            "cloud-builds",
            _build([f"cd4ml-run-{s.model}-20000101t000000z"]),
            {"buildId": str(uuid.uuid4()), "status": "SUCCESS"},
        ),
    ),
    Case(
        "Cloud Build message of a build that is not cd4ml's",
        "google",
        "on_build",
        "ignored",
        "is not a cd4ml build",
        lambda s: s.publish(
            "cloud-builds", _build(["someone-else"]), {"buildId": str(uuid.uuid4()), "status": "QUEUED"}
        ),
    ),
    Case(
        "Cloud Build message that is not JSON",
        "google",
        "on_build",
        "dead-letter",
        "not the Build as JSON",
        lambda s: s.publish("cloud-builds", b"<build/>", {"buildId": str(uuid.uuid4()), "status": "SUCCESS"}),
    ),
    Case(
        "Cloud Build message without buildId",
        "google",
        "on_build",
        "dead-letter",
        "not a Cloud Build notification",
        lambda s: s.publish("cloud-builds", _build([]), {"status": "SUCCESS"}),
    ),
    Case(
        "gcr DELETE",
        "google",
        "on_push",
        "ignored",
        "registry DELETE",
        lambda s: s.publish("gcr", json.dumps({"action": "DELETE", "tag": "r/x:y"}).encode(), {}),
    ),
    Case(
        "gcr push of an image no run owns",
        "google",
        "on_push",
        "ignored",
        "is not a push of a cd4ml run's image",
        lambda s: s.publish(
            "gcr",
            json.dumps(
                {"action": "INSERT", "digest": "elsewhere/img@sha256:" + "1" * 64, "tag": "elsewhere/img:latest"}
            ).encode(),
            {},
        ),
    ),
    Case(
        "gcr message that is not JSON",
        "google",
        "on_push",
        "dead-letter",
        "gcr message data is not JSON",
        lambda s: s.publish("gcr", b"\x89PNG", {}),
    ),
)


def _model(run_id: str) -> str:
    from cd4ml.run import RunId

    return RunId.parse(run_id).model


def _slot(run_id: str) -> str:
    from cd4ml.run import RunId

    return format_time(RunId.parse(run_id).scheduled_time)
