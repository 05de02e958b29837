"""The event catalog: event types (one schema each), stages, topics and settings, from catalog.yaml."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SCHEMA_DIR = Path(__file__).parent / "schemas"
CATALOG_FILE = Path(__file__).parent / "catalog.yaml"
EVENT_PREFIX = "cd4ml."


def topic_id(name: str) -> str:
    """The Pub/Sub topic id of an event type (dots become dashes) or of a foreign topic (unchanged)."""
    return name.replace(".", "-")


DEAD_LETTER_SUFFIX = "-dead-letter"


def dead_letter_topic(stage: str) -> str:
    """The dead-letter topic id of a stage's subscription."""
    return f"cd4ml-{stage.replace('_', '-')}{DEAD_LETTER_SUFFIX}"


def subscription_id(stage: str, trigger: str | None = None) -> str:
    """The push subscription id that feeds a stage: ``cd4ml-<stage>``; for a stage with several triggers, one per
    trigger, ``cd4ml-<stage>-<topic without cd4ml->`` (``cd4ml-notify-run-rejected-v1``)."""
    base = f"cd4ml-{stage.replace('_', '-')}"
    return base if trigger is None else f"{base}-{topic_id(trigger).removeprefix('cd4ml-')}"


def dead_letter_hold(stage: str) -> str:
    """The pull subscription that keeps what a stage dead-lettered, for inspection."""
    return dead_letter_topic(stage) + "-hold"


@dataclass(frozen=True)
class Stage:
    """One Cloud Function: its input, its outputs and what it needs."""

    name: str
    doc: str
    trigger: str
    emits: tuple[str, ...]
    memory: str
    timeout_seconds: int
    uses: tuple[str, ...]
    env: tuple[str, ...]
    #: Every input of the stage; ``trigger`` is the first. Most stages have one (catalog ``trigger``); a stage
    #: with ``triggers`` (notify) gets one push subscription per topic, all with its one dead-letter topic.
    triggers: tuple[str, ...] = ()
    #: An observer (notify) never changes a run: a failure it exhausts its deliveries on is Pub/Sub's to dead-letter.
    observer: bool = False
    #: An HTTP endpoint called by people (decide_approval), not fed by a topic: no trigger, no subscription.
    http: bool = False

    @property
    def trigger_topic(self) -> str:
        return topic_id(self.trigger)

    @property
    def subscriptions(self) -> tuple[tuple[str, str], ...]:
        """(subscription id, topic id) of each push subscription that feeds the stage (none for an HTTP stage)."""
        if self.http:
            return ()
        inputs = self.triggers or (self.trigger,)
        if len(inputs) == 1:
            return ((subscription_id(self.name), topic_id(inputs[0])),)
        return tuple((subscription_id(self.name, t), topic_id(t)) for t in inputs)

    @property
    def foreign(self) -> bool:
        """True when the stage consumes a Google-owned topic rather than a cd4ml event or dead letters."""
        return bool(self.trigger) and not self.trigger.startswith(EVENT_PREFIX) and not self.reads_dead_letters

    @property
    def reads_dead_letters(self) -> bool:
        """True when the stage's inputs are other stages' dead-letter topics (on_dead_letter)."""
        inputs = self.triggers or (self.trigger,)
        return bool(self.trigger) and all(t.endswith(DEAD_LETTER_SUFFIX) for t in inputs)


@dataclass(frozen=True)
class Delivery:
    """Retry and dead-letter policy of every stage subscription."""

    ack_deadline_seconds: int
    max_delivery_attempts: int
    minimum_backoff_seconds: int
    maximum_backoff_seconds: int
    dead_letter_retention_seconds: int


@dataclass(frozen=True)
class Setting:
    """One environment variable the code reads."""

    name: str
    doc: str
    required: bool
    default: str | None


@dataclass(frozen=True)
class Catalog:
    """Everything catalog.yaml and the schemas define."""

    event_types: tuple[str, ...]
    stages: tuple[Stage, ...]
    delivery: Delivery
    foreign_topics: tuple[str, ...]
    settings: tuple[Setting, ...]
    succeeded_on: str
    failed_on: tuple[str, ...]
    stale_after_seconds: int
    skipped_on: tuple[str, ...] = ()
    #: Topics cd4ml creates for Cloud Storage notifications: (topic id, bucket role, event types).
    notification_topics: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    rejected_on: tuple[str, ...] = ()
    awaits_on: tuple[str, ...] = ()

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage named {name!r}; stages are {', '.join(s.name for s in self.stages)}")

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic a deployment has: one per event type, the foreign ones, one dead-letter per stage."""
        return (
            tuple(topic_id(t) for t in self.event_types)
            + self.foreign_topics
            + tuple(n[0] for n in self.notification_topics)
            + tuple(dead_letter_topic(s.name) for s in self.stages)
        )


@functools.cache
def load() -> Catalog:
    """Read catalog.yaml and the schema directory once per process."""
    raw: dict[str, Any] = yaml.load(CATALOG_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    event_types = tuple(sorted(p.name.removesuffix(".json") for p in SCHEMA_DIR.glob(f"{EVENT_PREFIX}*.json")))
    stages = tuple(
        Stage(
            name=name,
            doc=spec["doc"],
            trigger=spec["triggers"][0] if "triggers" in spec else spec.get("trigger", ""),
            triggers=tuple(spec["triggers"])
            if "triggers" in spec
            else ((spec["trigger"],) if "trigger" in spec else ()),
            observer=bool(spec.get("observer", False)),
            http=bool(spec.get("http", False)),
            emits=tuple(spec["emits"]),
            memory=spec["memory"],
            timeout_seconds=int(spec["timeout_seconds"]),
            uses=tuple(spec["uses"]),
            env=tuple(spec["env"]),
        )
        for name, spec in raw["stages"].items()
    )
    settings = tuple(
        Setting(name=k, doc=v["doc"], required=bool(v.get("required", False)), default=v.get("default"))
        for k, v in raw["settings"].items()
    )
    return Catalog(
        event_types=event_types,
        stages=stages,
        delivery=Delivery(**raw["delivery"]),
        foreign_topics=tuple(raw["foreign_topics"]),
        settings=settings,
        succeeded_on=raw["run"]["succeeded_on"],
        failed_on=tuple(raw["run"]["failed_on"]),
        stale_after_seconds=int(raw["run"]["stale_after_seconds"]),
        skipped_on=tuple(raw["run"].get("skipped_on", ())),
        notification_topics=tuple(
            (name, str(spec["bucket"]), tuple(spec["event_types"]))
            for name, spec in (raw.get("notification_topics") or {}).items()
        ),
        rejected_on=tuple(raw["run"].get("rejected_on", ())),
        awaits_on=tuple(raw["run"].get("awaits_on", ())),
    )


@functools.cache
def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of an event type, or of ``manifest`` / ``run``."""
    file = SCHEMA_DIR / (f"{name}.json" if name.startswith(EVENT_PREFIX) else f"{name}.schema.json")
    result: dict[str, Any] = json.loads(file.read_text())
    return result
