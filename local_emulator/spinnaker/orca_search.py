"""Orca's execution search, as Gate's `GET /applications/{app}/executions/search` reaches it.

Sources: spinnaker/gate ExecutionsController.java (forwards every parameter, same defaults) and
spinnaker/orca TaskController.groovy `searchForPipelinesByTrigger` (April 2025), with
SqlExecutionRepository.retrievePipelinesForPipelineConfigIdsBetweenBuildTimeBoundary (build_time strictly
between the boundaries) and kork GenericExceptionHandlers (IllegalArgumentException → 400, others → 500).

Rules a caller can observe:
- application `*` searches every application and IGNORES pipelineName; otherwise the pipelines of the
  application, narrowed to the exact pipelineName when one is given (empty means none).
- triggerTypes: comma-separated, exact (no trimming); `*` or empty means every type.
- eventId: exact; empty means no filter. statuses: comma-separated ExecutionStatus names (any case);
  an unknown one is a 400.
- trigger: base64 (java.util.Base64 basic decoder) of a JSON object; the execution's trigger must contain
  it: strings equal ignoring case or full-match it as a regex, maps by key, collections by a unique
  element per item, anything else by Groovy `==`. Undecodable → 500; an invalid regex reached → 400.
- Boundaries are longs (default 0 and Long.MAX_VALUE), both >= 0, start <= end; startIndex >= 0;
  size > 0 (default 10); violations are 400 with Orca's messages. Sorted by buildTime, newest first
  (`reverse=true`: oldest first). Orca reads pages of 2*size and stops once it holds `size` matches, then
  slices [startIndex, startIndex+size): a startIndex beyond what those pages held gives [].
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from local_emulator.spinnaker.echo_matching import java_pattern

LONG_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
EXECUTION_STATUSES = (
    "NOT_STARTED",
    "RUNNING",
    "PAUSED",
    "SUSPENDED",
    "SUCCEEDED",
    "FAILED_CONTINUE",
    "TERMINAL",
    "CANCELED",
    "REDIRECT",
    "STOPPED",
    "SKIPPED",
    "BUFFERED",
)  # fmt: skip  -- orca-api ExecutionStatus
_JAVA_INTEGER = re.compile(r"[+-]?\d+")


class SearchError(ValueError):
    """A search Orca refuses: `status` is the HTTP status Gate relays (400 or 500)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _param(query: Mapping[str, Sequence[str]], name: str) -> str | None:
    """A String @RequestParam: several values arrive joined with commas (Spring's conversion)."""
    values = query.get(name)
    return ",".join(values) if values else None


def _number(query: Mapping[str, Sequence[str]], name: str, default: int, limit: int) -> int:
    """A long/int @RequestParam with a defaultValue (an empty value takes the default)."""
    text = (_param(query, name) or "").strip()
    if not text:
        return default
    if not _JAVA_INTEGER.fullmatch(text) or not -limit - 1 <= int(text) <= limit:
        raise SearchError(
            400, f"Failed to convert value of type 'java.lang.String' to required type; For input string: \"{text}\""
        )
    return int(text)


def _boolean(query: Mapping[str, Sequence[str]], name: str) -> bool:
    """Spring's StringToBooleanConverter: true/on/yes/1, false/off/no/0, any case."""
    text = (_param(query, name) or "").strip().lower()
    if text in ("", "false", "off", "no", "0"):
        return False
    if text in ("true", "on", "yes", "1"):
        return True
    raise SearchError(400, f"Invalid boolean value '{text}'")


def _decode_trigger(encoded: str | None) -> Mapping[str, Any]:
    """TaskController.decodeTriggerParams: Base64.getDecoder() then Jackson into a Map; failure is a 500."""
    if encoded is None:
        return {}
    try:
        if re.search(r"[^A-Za-z0-9+/=]", encoded):
            raise binascii.Error("Illegal base64 character")
        unpadded = encoded.rstrip("=")  # java.util.Base64: padding optional, but never more than needed
        if len(encoded) - len(unpadded) > -len(unpadded) % 4:
            raise binascii.Error("Input byte array has incorrect ending byte")
        decoded = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
        params = json.loads(decoded.decode("utf-8"))
    except (binascii.Error, ValueError) as error:
        raise SearchError(500, f"Failed to parse encoded trigger: {error}") from error
    if not isinstance(params, Mapping):
        raise SearchError(500, "Failed to parse encoded trigger: not a JSON object")
    return params


def _groovy_equals(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # Groovy compares numbers by value across Integer/Long/Double
    return type(a) is type(b) and a == b


def matches_subset(value: Any, subset: Any) -> bool:
    """TaskController.checkObjectMatchesSubset; SearchError(400) for an invalid regex it must apply."""
    if isinstance(value, str) and isinstance(subset, str):
        if value.lower() == subset.lower() or value.upper() == subset.upper():
            return True
        try:
            return java_pattern(subset).fullmatch(value) is not None
        except re.error as error:
            raise SearchError(400, f"PatternSyntaxException: {error}") from error
    if isinstance(value, Mapping) and isinstance(subset, Mapping):
        return all(matches_subset(value.get(key), item) for key, item in subset.items())
    if isinstance(value, list) and isinstance(subset, list):
        return _collection_matches(value, subset)
    return _groovy_equals(value, subset)


def _collection_matches(collection: list[Any], subset: list[Any]) -> bool:
    """checkCollectionMatchesSubset: for some permutation of the subset, each item greedily takes the
    first still-unused element it matches."""
    if len(subset) > len(collection):
        return False
    for permutation in itertools.permutations(subset):
        remaining = list(collection)
        for item in permutation:
            hit = next((n for n, element in enumerate(remaining) if matches_subset(element, item)), None)
            if hit is None:
                break
            del remaining[hit]
        else:
            return True
    return False


def search(
    application: str,
    query: Mapping[str, Sequence[str]],
    pipeline_ids: Callable[[str, str | None], list[str]],
    executions: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """searchForPipelinesByTrigger over rendered executions (each with buildTime, status, trigger...).

    `pipeline_ids(application, pipelineName)` answers Front50's part: the config ids to search."""
    start_bound = _number(query, "triggerTimeStartBoundary", 0, LONG_MAX)
    end_bound = _number(query, "triggerTimeEndBoundary", LONG_MAX, LONG_MAX)
    start_index = _number(query, "startIndex", 0, INT_MAX)
    size = _number(query, "size", 10, INT_MAX)
    reverse = _boolean(query, "reverse")
    _boolean(query, "expand")
    for problem, ok in (
        (f"triggerTimeStartBoundary must be >= 0: triggerTimeStartBoundary={start_bound}", start_bound >= 0),
        (f"triggerTimeEndBoundary must be >= 0: triggerTimeEndBoundary={end_bound}", end_bound >= 0),
        (
            "triggerTimeStartBoundary must be <= triggerTimeEndBoundary: "
            f"triggerTimeStartBoundary={start_bound}, triggerTimeEndBoundary={end_bound}",
            start_bound <= end_bound,
        ),
        (f"startIndex must be >= 0: startIndex={start_index}", start_index >= 0),
        (f"size must be > 0: size={size}", size > 0),
    ):
        if not ok:
            raise SearchError(400, problem)
    trigger_params = _decode_trigger(_param(query, "trigger"))
    types_text = _param(query, "triggerTypes")
    trigger_types = set(types_text.split(",")) if types_text and types_text != "*" else None
    event_id = _param(query, "eventId")
    statuses_text = _param(query, "statuses")
    statuses = None
    if statuses_text:
        statuses = {s.upper() for s in statuses_text.split(",")}
        unknown = sorted(statuses - set(EXECUTION_STATUSES))
        if unknown:
            raise SearchError(
                400, f"No enum constant com.netflix.spinnaker.orca.api.pipeline.models.ExecutionStatus.{unknown[0]}"
            )
    config_ids = set(pipeline_ids(application, None if application == "*" else _param(query, "pipelineName")))

    candidates = [
        e
        for e in executions
        if e.get("pipelineConfigId") in config_ids
        and start_bound < int(e["buildTime"]) < end_bound
        and (statuses is None or e["status"] in statuses)
    ]
    order = {id(e): n for n, e in enumerate(executions)}  # within one millisecond, later stored = newer
    candidates.sort(key=lambda e: (int(e["buildTime"]), order[id(e)]), reverse=not reverse)

    matching: list[dict[str, Any]] = []
    page = 2 * size
    for offset in itertools.count(0, page):
        batch = candidates[offset : offset + page]
        for execution in batch:
            trigger = execution.get("trigger") or {}
            if trigger_types is not None and trigger.get("type") not in trigger_types:
                continue
            if event_id and event_id != trigger.get("eventId"):
                continue
            if matches_subset(trigger, trigger_params):
                matching.append(dict(execution))
        if len(batch) < page or len(matching) >= size:
            break
    return matching[start_index : start_index + size]
