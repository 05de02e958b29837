"""Pipeline configs and which of them a webhook starts, as Echo's WebhookEventHandler decides.

Sources (spinnaker/echo, April 2025):
- echo-webhooks/.../controllers/WebhooksController.groovy: `POST /webhooks/{type}/{source}`; the event's
  content is the posted map (its `parameters` and `artifacts`), its payload a copy of it.
- echo-pipelinetriggers/.../PipelineCache.java `extractEnabledTriggersFrom`: triggers of pipelines that are
  not `disabled`, whose `enabled` is true (a missing `enabled` is Java's `false`), grouped by exact `type`.
- .../eventhandlers/WebhookEventHandler.java: handles every event type but `manual`; a trigger is valid if
  enabled and its type is exactly `webhook`; it matches if its type equals the path's type ignoring case,
  its `source` equals the path's source, and its `payloadConstraints` are null or hold
  (ArtifactMatcher.isJsonPathConstraintInPayload).
- .../eventhandlers/BaseTriggerEventHandler.java: then the trigger's expectedArtifactIds must be bound by
  the event's artifacts (anyArtifactsMatchExpected); an exception there skips only that trigger; distinct
  (pipeline, trigger) pairs each start an execution.
- echo-model Trigger.java / WebhookContent.java: the content's `parameters` is a Map and `artifacts` a
  List<Artifact>; Jackson failing to convert them makes the TriggerMonitor throw: the event starts nothing.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_emulator.spinnaker.echo_matching import (
    EventDropped,
    TriggerSkipped,
    any_artifacts_match_expected,
    is_json_path_constraint_in_payload,
    java_pattern,
    java_string,
)

WEBHOOK = "webhook"  # WebhookEventHandler.TRIGGER_TYPE
_ARTIFACT_STRINGS = ("type", "name", "version", "location", "reference", "artifactAccount", "provenance", "uuid")
_log = logging.getLogger("gate")


class ConfigError(ValueError):
    """The pipeline config cannot be read; the message names every problem found."""


@dataclass(frozen=True)
class WebhookTrigger:
    """One trigger of a pipeline, with the fields Echo reads (any type; only `webhook` ones fire here)."""

    type: str | None
    source: str | None = None
    payload_constraints: Mapping[Any, Any] | None = None
    enabled: bool = False  # Trigger.enabled is a Java boolean: absent means false
    expected_artifact_ids: tuple[str, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)

    def is_valid(self) -> bool:
        """WebhookEventHandler.isValidTrigger: enabled and of type exactly `webhook`."""
        return self.enabled and self.type == WEBHOOK

    def matches(self, source: str, payload: Mapping[str, Any], webhook_type: str = WEBHOOK) -> bool:
        """isValidTrigger and matchTriggerFor; raises EventDropped where Echo's Java throws."""
        return (
            self.is_valid()
            and self.type is not None
            and self.type.lower() == webhook_type.lower()
            and self.source is not None
            and self.source == source
            and (
                self.payload_constraints is None
                or is_json_path_constraint_in_payload(self.payload_constraints, payload)
            )
        )


#: The stages of the stand-in's canary pipeline when the config names none (Mercari's canary: deploy, analyse, promote).
DEFAULT_STAGES = ("Deploy canary", "Canary analysis", "Promote to production")
#: What an execution may end as (Orca ExecutionStatus); RUNNING means it never ends (a test of the deadline).
OUTCOMES = ("SUCCEEDED", "TERMINAL", "CANCELED", "STOPPED", "RUNNING")


@dataclass(frozen=True)
class Outcome:
    """How an execution of this pipeline ends (stand-in only): its status, and at which stage when it fails."""

    status: str = "SUCCEEDED"
    stage: str = ""

    @classmethod
    def parse(cls, raw: Any, stages: tuple[str, ...], where: str, problems: list[str]) -> Outcome:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping) or raw.get("status") not in OUTCOMES:
            problems.append(f"{where}: `outcome` needs a status among {', '.join(OUTCOMES)}")
            return cls()
        stage = str(raw.get("stage") or (stages[-1] if raw["status"] not in ("SUCCEEDED", "RUNNING") else ""))
        if stage and stage not in stages:
            problems.append(f"{where}: outcome stage {stage!r} is not one of the pipeline's stages {list(stages)}")
        return cls(status=str(raw["status"]), stage=stage)


@dataclass(frozen=True)
class Pipeline:
    """A pipeline config: owner, triggers, parameters and expected artifacts, as Front50 stores it."""

    application: str
    name: str
    id: str
    triggers: tuple[WebhookTrigger, ...]
    parameter_config: tuple[Mapping[str, Any], ...] = ()
    expected_artifacts: tuple[Mapping[str, Any], ...] = ()
    disabled: bool = False
    stages: tuple[str, ...] = DEFAULT_STAGES
    outcome: Outcome = field(default_factory=lambda: Outcome())


@dataclass(frozen=True)
class WebhookEvent:
    """Echo's WebhookEvent: details (type, source), the payload, and its content's parameters/artifacts."""

    type: str
    source: str
    payload: Mapping[str, Any]
    parameters: Mapping[Any, Any] | None
    artifacts: tuple[Mapping[str, Any] | None, ...]


def convert_event(webhook_type: str, source: str, payload: Mapping[str, Any]) -> WebhookEvent:
    """objectMapper.convertValue(event, WebhookEvent.class); EventDropped where Jackson would fail."""
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise EventDropped(f"content.parameters is not a Map: {java_string(parameters)}")
    artifacts = payload.get("artifacts") or []  # WebhooksController: a falsy list goes to the extractors
    if not isinstance(artifacts, list):
        raise EventDropped(f"content.artifacts is not a List<Artifact>: {java_string(artifacts)}")
    for artifact in artifacts:
        if artifact is not None and not isinstance(artifact, Mapping):
            raise EventDropped(f"an artifact is not an object: {java_string(artifact)}")
        for name, value in (artifact or {}).items():
            if name in _ARTIFACT_STRINGS and isinstance(value, (Mapping, list)):
                raise EventDropped(f"artifact.{name} is not a String: {java_string(value)}")
    return WebhookEvent(webhook_type, source, payload, parameters, tuple(artifacts))


def matching_pipelines(pipelines: Sequence[Pipeline], event: WebhookEvent) -> list[tuple[Pipeline, WebhookTrigger]]:
    """BaseTriggerEventHandler.getMatchingPipelines for the WebhookEventHandler; raises EventDropped."""
    if event.type == "manual":  # WebhookEventHandler.handleEventType
        return []
    candidates = [
        (pipeline, trigger)
        for pipeline in pipelines
        if not pipeline.disabled
        for trigger in pipeline.triggers
        if trigger.enabled and trigger.type == WEBHOOK  # PipelineCache: enabled triggers by type
    ]
    matched = [(p, t) for p, t in candidates if t.matches(event.source, event.payload, event.type)]
    started: list[tuple[Pipeline, WebhookTrigger]] = []
    for pipeline, trigger in matched:
        try:
            bound = any_artifacts_match_expected(
                event.artifacts, trigger.expected_artifact_ids, pipeline.expected_artifacts
            )
        except TriggerSkipped as error:  # withMatchingTrigger catches, logs, and skips this trigger
            _log.warning("trigger skipped", extra={"pipeline": pipeline.name, "reason": str(error)})
            continue
        if bound and (pipeline, trigger) not in started:  # .distinct()
            started.append((pipeline, trigger))
    return started


def execution_trigger(
    pipeline: Pipeline, trigger: WebhookTrigger, event: WebhookEvent, event_id: str
) -> dict[str, Any]:
    """The execution's trigger: the trigger config at the event's parameters, payload and eventId
    (WebhookEventHandler.buildTrigger), artifacts received, and parameterConfig defaults filled in as
    Orca's OperationsController does (a key the payload gives is kept, even when null)."""
    parameters = dict(event.parameters or {})
    for config in pipeline.parameter_config:
        if "name" in config and config["name"] not in parameters:
            parameters[config["name"]] = config.get("default")
    return {
        **trigger.config,
        "type": trigger.type,
        "user": "[anonymous]",
        "parameters": parameters,
        "payload": dict(event.payload),
        "artifacts": [dict(a) for a in event.artifacts if a is not None],
        "eventId": event_id,
        "rebake": False,
        "dryRun": False,
        "strategy": False,
        "notifications": [],
    }


def _warn_never_fires(where: str, trigger: WebhookTrigger) -> None:
    """Front50 stores such triggers and Echo silently never fires them: say so once, at load."""
    reasons = []
    if "enabled" not in trigger.config:
        reasons.append("no `enabled` (Echo reads false)")
    if trigger.type is not None and trigger.type != WEBHOOK and trigger.type.lower() == WEBHOOK:
        reasons.append(f"type {trigger.type!r} is not exactly 'webhook'")
    for key, value in (trigger.payload_constraints or {}).items():
        try:
            java_pattern(java_string(value))
        except (re.error, ValueError) as error:  # any compile failure means "never matches"
            reasons.append(f"payloadConstraints[{key!r}] is not a valid Java regex ({error})")
    if reasons:
        _log.warning("trigger will never fire", extra={"trigger": where, "reasons": reasons})


def parse_config(document: Mapping[str, Any]) -> tuple[Pipeline, ...]:
    """Pipelines from a config document; raises ConfigError listing every structural problem at once.
    What Front50 would store but Echo never fires (no `enabled`, a bad regex) is accepted and logged."""
    problems: list[str] = []
    pipelines: list[Pipeline] = []
    raw_pipelines = document.get("pipelines")
    if not isinstance(raw_pipelines, list):
        raise ConfigError("config needs a `pipelines` list")
    for number, raw in enumerate(raw_pipelines):
        where = f"pipelines[{number}]"
        if not isinstance(raw, Mapping):
            problems.append(f"{where}: not a mapping")
            continue
        application, name = raw.get("application"), raw.get("name")
        if not isinstance(application, str) or not application:
            problems.append(f"{where}: `application` is required")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: `name` is required")
        raw_triggers = raw.get("triggers", [raw["trigger"]] if "trigger" in raw else [])
        if not isinstance(raw_triggers, list) or not all(isinstance(t, Mapping) for t in raw_triggers):
            problems.append(f"{where}: `triggers` must be a list of mappings")
            continue
        triggers = []
        for t_number, trig in enumerate(raw_triggers):
            constraints = trig.get("payloadConstraints")
            if constraints is not None and not isinstance(constraints, Mapping):
                problems.append(f"{where}.triggers[{t_number}]: `payloadConstraints` must be a mapping")
                continue
            ids = trig.get("expectedArtifactIds") or []
            trigger = WebhookTrigger(
                type=None if trig.get("type") is None else str(trig["type"]),
                source=None if trig.get("source") is None else str(trig["source"]),
                payload_constraints=constraints,
                enabled=trig.get("enabled") is True,
                expected_artifact_ids=tuple(str(i) for i in ids) if isinstance(ids, list) else (),
                config=dict(trig),
            )
            if trigger.type is not None and trigger.type.lower() == WEBHOOK:
                _warn_never_fires(f"{where}.triggers[{t_number}]", trigger)
            triggers.append(trigger)
        stages = tuple(str(x) for x in raw.get("stages") or DEFAULT_STAGES)
        outcome = Outcome.parse(raw.get("outcome"), stages, where, problems)
        parameter_config = raw.get("parameterConfig") or []
        expected = raw.get("expectedArtifacts") or []
        if isinstance(application, str) and isinstance(name, str):
            pipeline_id = str(raw.get("id") or uuid.uuid5(uuid.NAMESPACE_URL, f"spinnaker:{application}/{name}"))
            pipelines.append(
                Pipeline(
                    application,
                    name,
                    pipeline_id,
                    tuple(triggers),
                    tuple(p for p in parameter_config if isinstance(p, Mapping)),
                    tuple(e for e in expected if isinstance(e, Mapping)),
                    raw.get("disabled") is True,
                    stages,
                    outcome,
                )
            )
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(pipelines)


def load_config(path: Path) -> tuple[Pipeline, ...]:
    """Read a YAML or JSON config file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # deferred: only YAML configs need it

        document = yaml.safe_load(text) or {}
    else:
        document = json.loads(text)
    if not isinstance(document, Mapping):
        raise ConfigError(f"{path}: top level must be a mapping")
    return parse_config(document)
