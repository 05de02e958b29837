"""Echo's and kork's own tests, ported to the Gate stand-in's matching (each names the test it comes from).

Sources: spinnaker/echo echo-pipelinetriggers/src/test/groovy/.../artifacts/ArtifactMatcherSpec.groovy and
.../eventhandlers/WebhookEventHandlerSpec.groovy; spinnaker/kork kork-artifacts/src/test/.../
ExpectedArtifactTest.java. JsonPath cases marked "json-path 2.10.0" were run against the real jars
(json-path 2.10.0, json-smart 2.6.0, Gson) with ArtifactMatcher's code, and their results copied here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from local_emulator.spinnaker import GateState, parse_config
from local_emulator.spinnaker.echo_matching import (
    EventDropped,
    TriggerSkipped,
    any_artifacts_match_expected,
    expected_artifact_matches,
    is_constraint_in_payload,
    is_json_path_constraint_in_payload,
    java_string,
    json_path_values,
)

# --- ArtifactMatcherSpec ---------------------------------------------------------------------------------
MATCH = {"one": "one", "two": "two", "three": "three"}
NO_MATCH = {"four": "four", "five": "five"}
WITH_LIST = {"one": ["one"]}
COMPLEX: dict[str, Any] = {
    "one": {
        "test1": {
            "title": "test",
            "modified": ["folder1/file1.txt", "folder1/file2.txt", "folder2/file1.yml"],
            "isValid": True,
            "author": {"name": "edgar", "username": "edgarulg"},
        },
        "test2": {
            "title": "another test",
            "created": ["folder3/new.txt"],
            "isValid": False,
            "author": {"name": "jorge", "username": "jorge123"},
            "changes": [{"id": 1, "value": "foo"}, {"id": 2, "value": "bar"}],
        },
    },
    "two": {"test3": {"count": 3, "ref": None, "isActive": False}},
}
OR = {"one": ["uno", "one"]}
STRINGIFIED = {"one": "['uno', 'one']"}

BOTH = pytest.mark.parametrize("check", [is_constraint_in_payload, is_json_path_constraint_in_payload])


@BOTH
@pytest.mark.parametrize(
    ("spec", "constraints", "payload", "expected"),
    [
        ("matches when constraint is partial word", {"one": "o"}, MATCH, True),
        ("matches exact string", {"one": "one"}, MATCH, True),
        ("no match when constraint word not present", {"one": "one"}, NO_MATCH, False),
        ("no match when constraint invalid", {"one": "[one,two"}, MATCH, False),
        ("matches when payload value is in a list of constraint strings", OR, MATCH, True),
        ("no match when val not present in list of constraint strings", OR, NO_MATCH, False),
        ("matches when val is in stringified list of constraints", STRINGIFIED, MATCH, True),
        ("matches when payload contains list and constraint is a stringified list", STRINGIFIED, WITH_LIST, True),
        ("matches when payload is a list list and constraints are a list", OR, WITH_LIST, True),
    ],
)
def test_artifact_matcher_spec_top_level(
    check: Any, spec: str, constraints: dict[str, Any], payload: dict[str, Any], expected: bool
) -> None:
    """ArtifactMatcherSpec: each case for isConstraintInPayload and its "... using Jsonpath" twin."""
    assert check(constraints, payload) is expected, spec


@pytest.mark.parametrize(
    ("spec", "constraints", "expected"),
    [
        ("matches when val is a string", {"$.one.test1.title": "st"}, True),
        ("no match when val is a string", {"$.one.test2.title": "no match"}, False),
        ("matches when val is a boolean", {"$.one.test1.isValid": "true"}, True),
        ("matches when val is a number", {"$.two.test3.count": "3"}, True),
        ("matches when val is a List<String>", {"$.one.test1.modified": ".yml"}, True),
        ("no matches when val is a List<String>", {"$.one.test1.modified": ".xml"}, False),
        ("no match when val is an Object", {"$.one.test1.author": "edgar"}, False),
        ("no match when val is a List<Map>", {"$.two.test2.changes": "bar"}, False),
        ("no match when field not found", {"$.two.test4.changes": "bar"}, False),
        ("no match when bad expression", {"$.one.test2.changes[a].value": "bar"}, False),
        ("no match when multiple JSONPath constraints", {"$.one.test1.title": "st", "$.one.test2.title": "no match"}, False),
    ],
)  # fmt: skip
def test_artifact_matcher_spec_json_path(spec: str, constraints: dict[str, Any], expected: bool) -> None:
    """ArtifactMatcherSpec: "... using JSONPath constraint with multi-level json"."""
    assert is_json_path_constraint_in_payload(constraints, COMPLEX) is expected, spec


# --- JsonPath and Java's toString, checked against the real libraries -----------------------------------
PROBE: dict[str, Any] = {
    "one": {"test1": {"title": "test", "modified": ["a.txt", "b.yml"], "isValid": True, "n": 3, "f": 1.5,
                      "big": 1e20, "author": {"name": "edgar"}, "objs": [{"id": 1, "v": "foo"}], "empty": [],
                      "nul": None}},
    "top": [1, "a", {"b": None, "c": [True]}],
}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("$.one.test1.title", ["test"]),
        ("one.test1.title", ["test"]),  # PathCompiler prefixes "$."
        ("$['one']['test1']['title']", ["test"]),  # bracket notation
        ("one['test1'].n", ["3"]),
        ("$.one.test1.f", ["1.5"]),
        ("$.one.test1.big", ["1.0E20"]),  # Double.toString
        ("$.one.test1.isValid", ["true"]),
        ("$.one.test1.modified", ["a.txt", "b.yml"]),
        ("$.one.test1.modified[1]", ["b.yml"]),
        ("$.one.test1.modified[-1]", ["b.yml"]),
        ("$.one.test1.modified[5]", None),
        ("$.one.test1.modified[*]", ["a.txt", "b.yml"]),
        ("$.one.test1.modified[0:1]", ["a.txt"]),
        ("$..title", ["test"]),
        ("$.one.*.title", ["test"]),
        ("$.one.test1.objs[*].v", ["foo"]),
        ("$.one.test1.objs[0]", None),  # an object reads as neither String nor List
        ("$.one.test1.author", None),
        ("$['one','top']", None),
        ("$.one.test1.empty", []),
        ("$.one.test1.nul", None),
        ("$..nul", []),  # Gson drops null map entries before JsonPath sees them
        ("$.missing[*]", []),
        ("$.one.test1.title.x", None),
        ("top", [1, "a", {"c": [True]}]),
        ("foo bar", None),  # InvalidPathException: "Use bracket notion"
        ("$.one.test2.changes[a].value", None),
    ],
)
def test_json_path_reads_as_echo_gets_them(path: str, values: list[Any] | None) -> None:
    """ArtifactMatcher.getValueUsingJsonPath; expected values from json-path 2.10.0 + json-smart 2.6.0."""
    assert json_path_values(PROBE, path) == values


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ([1, "a", {"b": None, "c": [True]}], "[1, a, {b=null, c=[true]}]"),
        ({"x": 1.0, "y": "s"}, "{x=1.0, y=s}"),
        (1e20, "1.0E20"),
        (1e-4, "1.0E-4"),
        (12345678.0, "1.2345678E7"),
        (0.001, "0.001"),
        (None, "null"),
        (False, "false"),
    ],
)
def test_java_to_string(value: Any, text: str) -> None:
    """ArrayList/LinkedHashMap/Double/Boolean toString, as printed by OpenJDK 17."""
    assert java_string(value) == text


@pytest.mark.parametrize(
    ("constraints", "expected"),
    [
        ({"ll": r"^\[a, b\]$"}, True),  # a list value is matched as its Java string
        ({"mm": r"^\{k=v, z=null\}$"}, True),
        ({"n": "^1.0$"}, True),  # 1.0 stays a Double
        ({"s": ["q", "r"]}, True),  # "[q, r]" is a character class
        ({"s": ["^q$"]}, False),  # "[^q$]" excludes q
        ({"x": None}, False),  # a null constraint still needs the key
        ({"s": None}, True),
        ({"$.obj": ".*"}, False),
        ({"$.e": "^$"}, True),
        ({"$.l": "yml"}, True),  # the first element matches before the integer is reached
        ({"b": True}, True),
    ],
)
def test_constraints_through_java_strings(constraints: dict[str, Any], expected: bool) -> None:
    """isJsonPathConstraintInPayload; expected values from running ArtifactMatcher's code on OpenJDK 17."""
    payload = {"l": ["a.yml", 2], "s": "q", "n": 1.0, "ll": ["a", "b"], "mm": {"k": "v", "z": None},
               "obj": {"k": 1}, "e": "", "b": True}  # fmt: skip
    assert is_json_path_constraint_in_payload(constraints, payload) is expected


@pytest.mark.parametrize(
    "constraints",
    [{"$.l": "zzz"}, {"$.m": "yml"}, {"$.l": None}, {"$.s": None}, {"$.nulls": "x"}],
)
def test_where_echo_throws_the_event_is_dropped(constraints: dict[str, Any]) -> None:
    """ClassCastException (a non-String JsonPath element reached), NullPointerException (a null constraint
    on a JsonPath hit, a null element): thrown out of getMatchingPipelines, so the event starts nothing."""
    payload = {"l": ["a.yml", 2], "m": [3, "b.yml"], "s": "q", "nulls": [None, "x"]}
    with pytest.raises(EventDropped):
        is_json_path_constraint_in_payload(constraints, payload)


def test_an_exception_in_one_trigger_drops_every_pipeline_of_the_event(tmp_path: Path) -> None:
    config = {"pipelines": [
        {"application": "a", "name": "fine", "trigger": {"type": "webhook", "source": "s", "enabled": True}},
        {"application": "a", "name": "throws", "trigger": {"type": "webhook", "source": "s", "enabled": True,
                                                           "payloadConstraints": {"$.l": "zzz"}}},
    ]}  # fmt: skip
    state = GateState(parse_config(config), tmp_path, 60_000)
    webhook = state.receive("s", {"l": [1]})
    assert webhook.execution_ids == () and webhook.dropped and "ClassCastException" in webhook.dropped
    assert len(state.receive("s", {"l": ["zzz"]}).execution_ids) == 2


# --- kork ExpectedArtifactTest ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expected_name", "incoming_name", "result"),
    [
        ("abc", "abcde", False),
        ("abc.*", "abcde", True),
        ("bc.*", "abcde", False),
        (".*bc.*", "abcde", True),
        ("abcde$", "abcde", True),
        ("^abcde$", "abcde", True),
        ("abc", None, False),
        ("abc", "", False),
        ("", "abcde", True),
        (None, "abcde", True),
    ],
)
def test_expected_artifact_regex_matching(expected_name: str | None, incoming_name: str | None, result: bool) -> None:
    """ExpectedArtifactTest.testRegexMatching: the WHOLE name must match (Matcher.matches)."""
    assert expected_artifact_matches({"name": expected_name}, {"name": incoming_name}) is result


@pytest.mark.parametrize("field", ["type", "name", "version", "location", "reference"])
def test_expected_artifact_required_matches(field: str) -> None:
    """ExpectedArtifactTest.testRequiredMatches."""
    assert expected_artifact_matches({field: "abcd"}, {field: "abcd"})
    assert not expected_artifact_matches({field: "abcd"}, {field: "zzz"})


@pytest.mark.parametrize("field", ["provenance", "uuid", "artifactAccount"])
def test_expected_artifact_allowed_non_matches(field: str) -> None:
    """ExpectedArtifactTest.testAllowedNonMatches."""
    assert expected_artifact_matches({field: "abcd"}, {field: "zzz"})


@pytest.mark.parametrize(
    ("ours", "theirs", "result"),
    [
        ("SGVsbG8gV29ybGQK", "SGVsbG8gV29ybGQK", True),
        ("SGVsbG8gV29ybGQK", None, False),
        ("SGVsbG8gV29ybGQK", "", False),
        ("", "SGVsbG8gV29ybGQK", True),
        ("+++", "+++", True),  # valid base64 but invalid regex: the equality check comes first
    ],
)
def test_expected_artifact_reference_matches(ours: str, theirs: str | None, result: bool) -> None:
    """ExpectedArtifactTest.testReferenceMatches."""
    match = {"type": "embedded/base64", "reference": ours}
    assert expected_artifact_matches(match, {"type": "embedded/base64", "reference": theirs}) is result


def test_expected_artifact_embedded_and_remote_base64_types_match() -> None:
    """ExpectedArtifactTest.checkEmbeddedStoredTypesMatch."""
    embedded, remote, other = {"type": "embedded/base64"}, {"type": "remote/base64"}, {"type": "does-not-exist"}
    for ours in (embedded, remote):
        assert expected_artifact_matches(ours, embedded) and expected_artifact_matches(ours, remote)
        assert not expected_artifact_matches(ours, other)


def test_expected_artifact_invalid_regex_or_missing_type_skips_the_trigger() -> None:
    """ExpectedArtifact.patternMatches compiles (PatternSyntaxException) and matchTypes calls other.equals
    (NullPointerException); BaseTriggerEventHandler.withMatchingTrigger catches: only that trigger is skipped."""
    with pytest.raises(TriggerSkipped):
        expected_artifact_matches({"name": "+++"}, {"name": "abc"})
    with pytest.raises(TriggerSkipped):
        expected_artifact_matches({"type": "docker/image"}, {"name": "abc"})


def test_any_artifacts_match_expected() -> None:
    """ArtifactMatcher.anyArtifactsMatchExpected: no ids → true; ids → some artifact binds a listed one."""
    expected = [{"id": "goodId", "matchArtifact": {"name": "myArtifact", "type": "artifactType"}}]
    good = {"name": "myArtifact", "type": "artifactType"}
    assert any_artifacts_match_expected([], None, expected)
    assert any_artifacts_match_expected([good], ["goodId"], expected)
    assert not any_artifacts_match_expected([], ["goodId"], expected)
    assert not any_artifacts_match_expected([good], ["otherId"], expected)


# --- WebhookEventHandlerSpec -----------------------------------------------------------------------------
EXPECTED = [{"id": "goodId", "matchArtifact": {"name": "myArtifact", "type": "artifactType"}}]
ENABLED = {"type": "webhook", "enabled": True}
DISABLED = {"type": "webhook", "enabled": False}


def _state(tmp_path: Path, *triggers: dict[str, Any], expected: list[Any] | None = None) -> GateState:
    pipeline = {"application": "app", "name": "pipe", "triggers": list(triggers), "expectedArtifacts": expected or []}
    return GateState(parse_config({"pipelines": [pipeline]}), tmp_path, 60_000)


def test_webhook_spec_triggers_pipelines_for_successful_builds(tmp_path: Path) -> None:
    """WebhookEventHandlerSpec: 'triggers pipelines for successful builds for webhook'."""
    trigger = {
        **ENABLED,
        "source": "myCIServer",
        "payloadConstraints": {"foo": "bar"},
        "expectedArtifactIds": ["goodId"],
    }
    state = _state(tmp_path, trigger, expected=EXPECTED)
    payload = {"foo": "bar", "artifacts": [{"name": "myArtifact", "type": "artifactType"}]}
    [execution_id] = state.receive("myCIServer", payload, "WEBHOOK").execution_ids
    execution = state.execution(execution_id)
    assert execution is not None and (execution["application"], execution["name"]) == ("app", "pipe")


def test_webhook_spec_attaches_webhook_trigger_to_the_pipeline(tmp_path: Path) -> None:
    """WebhookEventHandlerSpec: 'attaches webhook trigger to the pipeline' (a disabled trigger without a
    source sits beside it)."""
    state = _state(tmp_path, {**ENABLED, "source": "myCIServer"}, DISABLED)
    [execution_id] = state.receive("myCIServer", {}, "WEBHOOK").execution_ids
    execution = state.execution(execution_id)
    assert execution is not None and execution["trigger"]["type"] == "webhook"


@pytest.mark.parametrize(
    ("description", "trigger"),
    [
        ("disabled webhook trigger", DISABLED),
        ("different source name", {**ENABLED, "source": "wrongName"}),
        ("unsatisfied payload constraints", {**ENABLED, "source": "myCIServer", "payloadConstraints": {"foo": "bar"}}),
        ("unmatched expected artifact", {**ENABLED, "source": "myCIServer", "expectedArtifactIds": ["goodId"]}),
        ("enabled missing (Java's false)", {"type": "webhook", "source": "myCIServer"}),
        ("type not exactly webhook", {"type": "WEBHOOK", "source": "myCIServer", "enabled": True}),
    ],
)
def test_webhook_spec_does_not_trigger(tmp_path: Path, description: str, trigger: dict[str, Any]) -> None:
    """WebhookEventHandlerSpec: 'does not trigger #description pipelines for webhook' (+ two Trigger.java rules)."""
    state = _state(tmp_path, trigger, expected=EXPECTED)
    assert state.receive("myCIServer", {}, "WEBHOOK").execution_ids == (), description


def test_two_matching_triggers_of_one_pipeline_start_two_executions(tmp_path: Path) -> None:
    """BaseTriggerEventHandler: `.distinct()` over Pipeline.withTrigger(...): distinct triggers are kept."""
    state = _state(tmp_path, {**ENABLED, "source": "s"}, {**ENABLED, "source": "s", "payloadConstraints": {"a": "1"}})
    assert len(state.receive("s", {"a": 1}).execution_ids) == 2
    assert len(state.receive("s", {}).execution_ids) == 1
