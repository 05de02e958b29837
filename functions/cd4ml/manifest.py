"""Model manifests: one YAML file per model, validated against schemas/manifest.schema.json."""

from __future__ import annotations

import functools
import json
import posixpath
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from jsonschema import Draft202012Validator

from cd4ml import catalog
from cd4ml.errors import InvalidManifest
from cd4ml.events import plain


@dataclass(frozen=True)
class Training:
    """The Vertex AI worker pool and what it runs."""

    machine_type: str
    replica_count: int
    container_image: str
    container_command: tuple[str, ...]
    executor_image: str
    package_uris: tuple[str, ...]
    python_module: str
    args: tuple[str, ...]
    hyperparameters: Mapping[str, str | int | float | bool]
    timeout_seconds: int
    container_dockerfile: str = ""  # the trainer image's Dockerfile in the model folder: `cd4ml model push` builds it


MAXIMIZE = "maximize"
MINIMIZE = "minimize"


@dataclass(frozen=True)
class MetricRule:
    """One gated metric: which way is better, the bar it must clear, and how much worse than the champion it may be.

    ``max_regression`` is in the metric's units; ``max_regression_relative`` a fraction of the champion's value
    (a manifest gives one or neither: neither allows no regression at all).
    """

    metric: str
    threshold: float
    direction: str = MAXIMIZE
    max_regression: float = 0.0
    max_regression_relative: float | None = None

    def allowed_regression(self, champion_value: float) -> float:
        """How far, in the metric's units, the candidate may be worse than a champion of this value."""
        if self.max_regression_relative is not None:
            return self.max_regression_relative * abs(champion_value)
        return self.max_regression


@dataclass(frozen=True)
class Evaluation:
    """The gate: every metric rule must pass (threshold and regression against the champion)."""

    rules: tuple[MetricRule, ...]

    @classmethod
    def single(
        cls, metric: str, threshold: float, max_regression: float = 0.0, direction: str = MAXIMIZE
    ) -> Evaluation:
        """A gate on one metric with an absolute regression allowance (the common case)."""
        return cls((MetricRule(metric, threshold, direction, max_regression),))

    @property
    def metric(self) -> str:
        """The first (primary) metric: what a one-line summary names."""
        return self.rules[0].metric


_RULE_KEYS = ("metric", "direction", "threshold", "max_regression", "max_regression_relative")


def _rule(raw: Mapping[str, Any]) -> MetricRule:
    relative = raw.get("max_regression_relative")
    return MetricRule(
        metric=str(raw["metric"]),
        threshold=float(raw["threshold"]),
        direction=str(raw.get("direction", MAXIMIZE)),
        max_regression=float(raw.get("max_regression", 0.0)),
        max_regression_relative=None if relative is None else float(relative),
    )


def _evaluation(raw: Mapping[str, Any]) -> Evaluation:
    return Evaluation(tuple(_rule(r) for r in raw["metrics"]) if "metrics" in raw else (_rule(raw),))


def _evaluation_problems(raw: Mapping[str, Any]) -> list[str]:
    """What JSON Schema cannot say in a readable line: inline rule xor ``metrics``, one regression kind, unique names."""
    inline = [k for k in _RULE_KEYS if k in raw]
    if "metrics" in raw:
        if inline:
            return [
                f"evaluation: {', '.join(inline)} given beside metrics; put every metric's rule under metrics, "
                "or gate one metric inline without metrics"
            ]
        listed = raw["metrics"] if isinstance(raw["metrics"], list) else []
        rules: list[tuple[str, Mapping[str, Any]]] = [
            (f"evaluation.metrics.{i}", r) for i, r in enumerate(listed) if isinstance(r, dict)
        ]
    else:
        missing = [k for k in ("metric", "threshold") if k not in raw]
        if missing:
            return [
                f"evaluation: {' and '.join(missing)} missing; gate one metric with metric and threshold "
                "(direction maximize|minimize, default maximize), or several under metrics"
            ]
        rules = [("evaluation", raw)]
    problems = [
        f"{where}: max_regression and max_regression_relative both given; give one (absolute, or a fraction "
        "of the champion's value)"
        for where, r in rules
        if "max_regression" in r and "max_regression_relative" in r
    ]
    names = [str(r.get("metric")) for _, r in rules]
    problems += [
        f"evaluation.metrics: {n!r} is gated twice; give each metric one rule"
        for n in sorted({n for n in names if names.count(n) > 1})
    ]
    return problems


@dataclass(frozen=True)
class Smoke:
    """The smoke test in the build: the golden requests, the server's command, and the bars it must clear."""

    requests: str  # relative to the manifest, inside the serving folder
    command: tuple[str, ...]
    min_agreement: float
    latency_ms: float
    port: int = 8080
    health_path: str = "/health"
    startup_seconds: float = 60.0
    abs_tolerance: float = 1e-12
    rel_tolerance: float = 1e-9

    def in_context(self, dockerfile: str) -> str:
        """The golden file's path in the build context (the Dockerfile's folder is the context's root)."""
        return posixpath.relpath(posixpath.normpath(self.requests), posixpath.dirname(posixpath.normpath(dockerfile)))


@dataclass(frozen=True)
class Approval:
    """A person must approve the candidate before delivery: who may, and how long the request stands."""

    approvers: tuple[str, ...]
    expires_after: timedelta


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``72h``, ``7d`` (the manifest's pattern) as a timedelta."""
    return timedelta(**{_UNITS[text[-1]]: int(text[:-1])})


def _approval(document: Mapping[str, Any]) -> Approval | None:
    raw = document.get("approval")
    if not raw or not raw.get("required"):
        return None
    return Approval(approvers=tuple(raw["approvers"]), expires_after=duration(str(raw.get("expires_after", "72h"))))


#: What a notification route may ask for (manifest ``notify[].on``).
NOTICE_KINDS = ("failed", "rejected", "approval_requested", "approval_decided", "promoted")


@dataclass(frozen=True)
class Route:
    """One place to tell people: a channel (its webhook URL is a secret), a format, and what to post there."""

    channel: str
    format: str
    on: tuple[str, ...]


def _routes(document: Mapping[str, Any]) -> tuple[Route, ...]:
    return tuple(
        Route(channel=r["channel"], format=r.get("format", "slack"), on=tuple(r.get("on") or NOTICE_KINDS))
        for r in document.get("notify") or ()
    )


def _smoke(serving: Mapping[str, Any]) -> Smoke | None:
    smoke = serving.get("smoke")
    if smoke is None:
        return None
    return Smoke(
        requests=smoke["requests"],
        command=tuple(smoke["command"]),
        min_agreement=float(smoke["min_agreement"]),
        latency_ms=float(smoke["latency_ms"]),
        port=int(smoke.get("port", 8080)),
        health_path=str(smoke.get("health_path", "/health")),
        startup_seconds=float(smoke.get("startup_seconds", 60)),
        abs_tolerance=float(smoke.get("abs_tolerance", 1e-12)),
        rel_tolerance=float(smoke.get("rel_tolerance", 1e-9)),
    )


@dataclass(frozen=True)
class Manifest:
    """A model: when it runs, on what data, how it trains, how it is gated and shipped."""

    name: str
    schedule: str
    time_zone: str
    data_source: str
    training: Training
    evaluation: Evaluation
    dockerfile: str
    base_image: str
    canary_application: str
    webhook_source: str
    canary_pipeline: str
    canary_deadline_minutes: float
    alias: str
    smoke: Smoke | None
    raw: Mapping[str, Any] = field(hash=False, repr=False)
    approval: Approval | None = None
    notify: tuple[Route, ...] = ()

    def scheduled_time(self, at: datetime) -> datetime:
        """The schedule's latest fire time at or before ``at``: a scheduler's duplicates map to one run."""
        zone = ZoneInfo(self.time_zone)
        local = at.astimezone(zone)
        itr = croniter(self.schedule, local.replace(microsecond=0) + timedelta(seconds=1))
        fire: datetime = itr.get_prev(datetime)
        return fire.astimezone(UTC)


def webhook_source(model: str) -> str:
    """The webhook source of ``model``'s canary pipeline: derived from its name, never free text of a manifest."""
    return f"cd4ml-{model}"


# libyaml's loader when PyYAML has it (its wheels do): ten times faster than the pure-Python one.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(catalog.schema("manifest"))


#: In ``training.container.image_uri``: the model's own repository (``CD4ML_REGISTRY`` with ``{model}``).
REGISTRY_PLACEHOLDER = "{registry}"


def _container_problems(container: Mapping[str, Any] | None) -> list[str]:
    """``{registry}`` only as the start of the image reference; a Dockerfile to build only for an image of the
    model's own repository (the one its push may write) and inside the model folder."""
    if not container:
        return []
    image, dockerfile = str(container["image_uri"]), container.get("dockerfile")
    problems = []
    if REGISTRY_PLACEHOLDER in image.removeprefix(REGISTRY_PLACEHOLDER + "/"):
        problems.append(
            f"training.container.image_uri: {image!r}: {REGISTRY_PLACEHOLDER} may only begin the reference, as in "
            f"{REGISTRY_PLACEHOLDER}/NAME-trainer:latest"
        )
    if dockerfile is not None and not image.startswith(REGISTRY_PLACEHOLDER + "/"):
        problems.append(
            f"training.container.image_uri: {image!r} must start with {REGISTRY_PLACEHOLDER}/ when "
            "training.container.dockerfile is set: `cd4ml model push` pushes the trainer image to the model's own "
            "repository only"
        )
    if dockerfile is not None and (str(dockerfile).startswith("/") or ".." in str(dockerfile).split("/")):
        problems.append(f"training.container.dockerfile: {dockerfile} must be a path inside the model folder")
    return problems


def parse(document: Any, origin: str = "manifest") -> Manifest:
    """Validate a manifest (already YAML-decoded); InvalidManifest names every field and reason."""
    problems = _problems_of(document)
    if problems:
        name = document.get("name") if isinstance(document, dict) else None
        raise InvalidManifest(f"invalid {origin}" + (f" for model {name!r}" if name else ""), problems)
    return _manifest(document)


#: Problems of the manifests validated lately, by their canonical JSON: every stage parses its run's manifest on
#: each message, and validating it (~4 ms, mostly jsonschema) was a tenth of a hop. Values only: a hit still
#: builds a new Manifest.
_VALIDATED: dict[str, list[str]] = {}
_VALIDATED_KEEP = 32
_VALIDATED_LOCK = threading.Lock()


def _problems_of(document: Any) -> list[str]:
    try:
        key = json.dumps(document, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):  # not JSON (YAML dates, say): validated every time
        return _problems(document)
    with _VALIDATED_LOCK:
        found = _VALIDATED.get(key)
    if found is None:
        found = _problems(document)
        with _VALIDATED_LOCK:
            if len(_VALIDATED) >= _VALIDATED_KEEP:
                _VALIDATED.pop(next(iter(_VALIDATED)), None)
            _VALIDATED[key] = found
    return list(found)


def _problems(document: Any) -> list[str]:
    """Every problem of a manifest: its schema, then the rules a schema cannot say."""
    problems = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
        for e in sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not problems:
        fields = str(document["schedule"]).split()
        if len(fields) != 5:  # croniter would read a sixth field as seconds; Cloud Scheduler refuses it
            problems.append(
                f"schedule: {str(document['schedule'])[:100]!r} has {len(fields)} fields; Cloud Scheduler's "
                "cron has exactly 5 (minute hour day-of-month month day-of-week)"
            )
        elif not croniter.is_valid(document["schedule"]):
            problems.append(f"schedule: {document['schedule']!r} is not a valid cron expression")
        try:
            ZoneInfo(document.get("time_zone", "Etc/UTC"))
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"time_zone: {document.get('time_zone')!r} is not a known time zone")
        smoke = document["serving"].get("smoke")
        if smoke is not None and Smoke(smoke["requests"], (), 0, 1).in_context(
            document["serving"]["dockerfile"]
        ).startswith("../"):
            problems.append(
                f"serving.smoke.requests: {smoke['requests']} is not inside the serving folder (the "
                "Dockerfile's), which is what `cd4ml model push` uploads and the build receives"
            )
        source = (document.get("canary") or {}).get("webhook_source")
        if source is not None and source != webhook_source(document["name"]):
            problems.append(
                f"canary.webhook_source: {source!r} is not {webhook_source(document['name'])!r}; the webhook source is "
                "derived from the model's name (drop the field), so a manifest cannot start another model's pipeline"
            )
        problems += _container_problems(document["training"].get("container"))
        if "bigquery" in document["data"]["source"]:
            problems.append("data.source.bigquery: BigQuery sources are not supported yet; use gcs_prefix")
    if isinstance(document, dict) and isinstance(document.get("evaluation"), dict):
        problems += _evaluation_problems(document["evaluation"])
    return problems


def _manifest(document: Any) -> Manifest:
    """The Manifest of a valid manifest document."""
    t = document["training"]
    pool = t["worker_pool"]
    container = t.get("container", {})
    package = t.get("python_package", {})
    canary = document.get("canary") or {}  # none: promoted once the smoke test passed (trigger_canary says so)
    return Manifest(
        name=document["name"],
        schedule=document["schedule"],
        time_zone=document.get("time_zone", "Etc/UTC"),
        data_source=document["data"]["source"]["gcs_prefix"],
        training=Training(
            machine_type=pool["machine_type"],
            replica_count=pool.get("replica_count", 1),
            container_image=container.get("image_uri", ""),
            container_command=tuple(container.get("command", ())),
            executor_image=package.get("executor_image", ""),
            package_uris=tuple(package.get("package_uris", ())),
            python_module=package.get("python_module", ""),
            args=tuple(t.get("args", ())),
            hyperparameters=dict(t.get("hyperparameters", {})),
            timeout_seconds=t.get("timeout_seconds", 3600),
            container_dockerfile=container.get("dockerfile", ""),
        ),
        evaluation=_evaluation(document["evaluation"]),
        dockerfile=document["serving"]["dockerfile"],
        base_image=document["serving"]["base_image"],
        canary_application=canary.get("application", ""),
        webhook_source=webhook_source(document["name"]) if canary else "",
        canary_pipeline=canary.get("pipeline", ""),
        canary_deadline_minutes=float(canary.get("deadline_minutes", 60)),
        alias=str(document["serving"].get("alias", "champion")),
        smoke=_smoke(document["serving"]),
        raw=plain(document),
        approval=_approval(document),
        notify=_routes(document),
    )


#: A manifest's largest size: the run record keeps it whole (Firestore's document limit is 1 MiB).
MAX_MANIFEST_BYTES = 64 * 1024


def loads(text: str, origin: str = "manifest") -> Manifest:
    """Parse and validate a manifest's YAML text (at most ``MAX_MANIFEST_BYTES``)."""
    size = len(text.encode())
    if size > MAX_MANIFEST_BYTES:
        raise InvalidManifest(
            f"invalid {origin}", [f"{size} bytes: a manifest is at most {MAX_MANIFEST_BYTES} bytes (64 KiB)"]
        )
    try:
        document = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise InvalidManifest(f"invalid {origin}", [f"not YAML: {exc}"]) from exc
    return parse(document, origin)


def resolve_gcs(path: str, bucket: str) -> str:
    """``gs://…`` as is; a relative path is taken inside ``bucket``."""
    return path if path.startswith("gs://") else f"gs://{bucket}/{path.lstrip('/')}"


def manifest_object(model: str) -> str:
    """Where a model's manifest lives in the artifact bucket."""
    return f"manifests/{model}.yaml"
