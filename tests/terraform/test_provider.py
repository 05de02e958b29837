"""The stand-in providers' two halves without Terraform: the schema read from the cdktn bindings is the provider's,
and planning / reading fills exactly the computed attributes."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("msgpack", reason="msgpack is installed by nox -s terraform")

from .provider import schema, values


@pytest.fixture(scope="module")
def google() -> dict[str, Any]:
    return schema.load("google")


def test_the_schemas_are_the_pinned_provider_versions() -> None:
    assert {name: schema.load(name)["version"] for name in schema.PACKAGES} == {
        "google": "8.7.0",
        "google-beta": "8.7.0",
        "archive": "2.8.1",
    }


def test_attributes_carry_type_and_flags(google: dict[str, Any]) -> None:
    subscription = google["resource"]["google_pubsub_subscription"]
    attributes = subscription["attributes"]
    assert attributes["name"] == {"type": "string", "required": True}
    assert attributes["ack_deadline_seconds"] == {"type": "number", "optional": True, "computed": True}
    assert attributes["effective_labels"] == {"type": ["map", "string"], "computed": True}
    assert attributes["enable_message_ordering"] == {"type": "bool", "optional": True}


def test_blocks_carry_nesting_and_limits(google: dict[str, Any]) -> None:
    subscription = google["resource"]["google_pubsub_subscription"]["block_types"]
    assert subscription["push_config"]["nesting_mode"] == "list" and subscription["push_config"]["max_items"] == 1
    assert subscription["timeouts"]["nesting_mode"] == "single"
    secret = google["resource"]["google_secret_manager_secret"]["block_types"]
    assert secret["replication"].get("min_items") == 1, "a required block"
    archive = schema.load("archive")["data"]["archive_file"]
    assert archive["attributes"]["excludes"]["type"] == ["set", "string"]
    assert archive["block_types"]["source"]["nesting_mode"] == "set"


def test_a_computed_only_nested_object_is_an_attribute(google: dict[str, Any]) -> None:
    function = google["resource"]["google_cloudfunctions2_function"]
    assert "state" in function["attributes"]
    uri = function["block_types"]["service_config"]["block"]["attributes"]["uri"]
    assert uri == {"type": "string", "computed": True}
    kind = google["data"]["google_cloudfunctions2_function"]["attributes"]["service_config"]["type"]
    assert kind[0] == "list" and kind[1][0] == "object" and kind[1][1]["uri"] == "string"


_BLOCK: dict[str, Any] = {
    "attributes": {
        "name": {"type": "string", "required": True},
        "id": {"type": "string", "computed": True, "optional": True},
        "uri": {"type": "string", "computed": True},
        "labels": {"type": ["map", "string"], "optional": True},
    },
    "block_types": {
        "config": {
            "nesting_mode": "list",
            "max_items": 1,
            "block": {"attributes": {"url": {"type": "string", "computed": True}, "size": {"type": "number"}}},
        }
    },
}


def test_a_plan_makes_unset_computed_attributes_unknown_and_keeps_the_rest() -> None:
    unknown_in_config = values.UNKNOWN
    proposed = {
        "name": "a",
        "id": "given",
        "uri": None,
        "labels": None,
        "config": [{"url": None, "size": unknown_in_config}],
    }
    planned = values.decode(values.encode(values.plan(_BLOCK, proposed)))
    assert planned["name"] == "a" and planned["id"] == "given" and planned["labels"] is None
    assert values.is_unknown(planned["uri"])
    assert values.is_unknown(planned["config"][0]["url"]) and values.is_unknown(planned["config"][0]["size"])


def test_a_read_gives_known_placeholders() -> None:
    state = values.read(_BLOCK, {"name": "a", "id": None, "uri": None, "labels": None, "config": []}, "thing")
    assert state == {"name": "a", "id": "stand-in:thing.id", "uri": "stand-in:thing.uri", "labels": None, "config": []}


def test_a_value_on_a_read_only_attribute_is_found_in_nested_blocks() -> None:
    config = {"name": "a", "id": "ok", "uri": "set", "labels": None, "config": [{"url": "set too", "size": 1}]}
    assert list(values.read_only_set(_BLOCK, config)) == [("uri",), ("config", 0, "url")]
