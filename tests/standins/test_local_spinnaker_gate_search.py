"""The Gate stand-in's execution search against Orca's TaskController.searchForPipelinesByTrigger
(spinnaker/orca orca-web TaskController.groovy; Gate's ExecutionsController forwards every parameter)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from local_emulator.spinnaker import GateState, SearchError, parse_config

CONFIG = {
    "pipelines": [
        {"application": "digits", "name": "canary", "trigger": {"type": "webhook", "source": "s", "enabled": True}},
        {"application": "digits", "name": "other", "trigger": {"type": "webhook", "source": "s", "enabled": True}},
        {"application": "iris", "name": "canary", "trigger": {"type": "webhook", "source": "s", "enabled": True}},
    ]
}


@pytest.fixture
def state(tmp_path: Path) -> GateState:
    return GateState(parse_config(CONFIG), tmp_path, execution_ms=60_000)


def _search(state: GateState, app: str, **query: str) -> list[dict[str, Any]]:
    return state.search(app, {key: [value] for key, value in query.items()})


def _names(found: list[dict[str, Any]]) -> list[str]:
    return [f"{e['application']}/{e['name']}" for e in found]


def test_star_ignores_pipeline_name_but_an_application_honours_it(state: GateState) -> None:
    """application == "*" takes every readable application's pipelines; pipelineName filters only otherwise."""
    state.receive("s", {"run": 1})
    assert len(_search(state, "*", pipelineName="canary")) == 3
    assert _names(_search(state, "digits", pipelineName="canary")) == ["digits/canary"]
    assert len(_search(state, "digits", pipelineName="")) == 2


def test_trigger_types_star_and_exact_comma_lists(state: GateState) -> None:
    """triggerTypes "*" means all; the list is split on "," without trimming."""
    state.receive("s", {})
    assert len(_search(state, "*", triggerTypes="*")) == 3
    assert len(_search(state, "*", triggerTypes="git,webhook")) == 3
    assert _search(state, "*", triggerTypes="git, webhook") == []


def test_base64_trigger_subset_filter(state: GateState) -> None:
    """decodeTriggerParams + checkObjectMatchesSubset: strings equal ignoring case or full-match as regex."""
    state.receive("s", {"model": "digits", "tags": ["a", "b"]})
    state.receive("s", {"model": "iris"})

    def encoded(trigger: dict[str, Any]) -> str:
        return base64.b64encode(json.dumps(trigger).encode()).decode()

    assert len(_search(state, "digits", trigger=encoded({"payload": {"model": "DIGITS"}}))) == 2
    assert len(_search(state, "digits", trigger=encoded({"payload": {"model": "dig.*"}}))) == 2
    assert _search(state, "digits", trigger=encoded({"payload": {"model": "dig"}})) == []
    assert len(_search(state, "digits", trigger=encoded({"payload": {"tags": ["b"]}}))) == 2
    with pytest.raises(SearchError) as bad:
        _search(state, "digits", trigger="not base64!")
    assert bad.value.status == 500
    with pytest.raises(SearchError) as regex:
        _search(state, "digits", trigger=encoded({"payload": {"model": "(("}}))
    assert regex.value.status == 400  # PatternSyntaxException is an IllegalArgumentException


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"triggerTimeStartBoundary": "-1"}, "triggerTimeStartBoundary must be >= 0"),
        ({"triggerTimeEndBoundary": "-1"}, "triggerTimeEndBoundary must be >= 0"),
        ({"triggerTimeStartBoundary": "5", "triggerTimeEndBoundary": "4"}, "must be <= triggerTimeEndBoundary"),
        ({"startIndex": "-1"}, "startIndex must be >= 0"),
        ({"size": "0"}, "size must be > 0"),
        ({"size": "ten"}, "Failed to convert"),
        ({"statuses": "RUNNING,DONE"}, "No enum constant"),
    ],
)
def test_validation_is_a_400_with_orcas_message(state: GateState, query: dict[str, str], message: str) -> None:
    """validateSearchForPipelinesByTriggerParameters (IllegalArgumentException → 400 in kork)."""
    with pytest.raises(SearchError) as raised:
        _search(state, "*", **query)
    assert raised.value.status == 400 and message in str(raised.value)


def test_boundaries_are_exclusive_and_statuses_any_case(state: GateState) -> None:
    """SqlExecutionRepository: build_time > start and < end; ExecutionStatus.valueOf(upper case)."""
    webhook = state.receive("s", {})
    [execution] = _search(state, "iris")
    built = str(execution["buildTime"])
    assert _search(state, "iris", triggerTimeStartBoundary=built) == []
    assert _search(state, "iris", triggerTimeEndBoundary=built) == []
    assert len(_search(state, "iris", statuses="running", eventId=webhook.event_id)) == 1
    assert _search(state, "iris", statuses="SUCCEEDED") == []


def test_paging_reads_pages_of_twice_the_size_as_orca_does(state: GateState) -> None:
    """Orca collects pages of 2*size until it holds `size` matches, then slices [startIndex, +size)."""
    for run in range(7):
        state.receive("s", {"run": run})
    newest_first = _search(state, "iris", size="100")
    assert [e["trigger"]["payload"]["run"] for e in newest_first] == [6, 5, 4, 3, 2, 1, 0]
    assert [e["trigger"]["payload"]["run"] for e in _search(state, "iris", size="2", startIndex="2")] == [4, 3]
    assert _search(state, "iris", size="2", startIndex="4") == []  # beyond the first page of 4
    assert [e["trigger"]["payload"]["run"] for e in _search(state, "iris", size="3", reverse="true")] == [0, 1, 2]
