"""A team without Spinnaker: no canary block, and a run promotes once its image passed the smoke test, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cd4ml import events
from cd4ml.errors import InvalidEvent
from cd4ml.events import Event
from cd4ml.manifest import parse
from cd4ml.stages import delivery

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits" / "manifest.yaml"


def test_a_manifest_without_a_canary_is_valid() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc.pop("canary")
    manifest = parse(doc)
    assert (manifest.canary_application, manifest.webhook_source, manifest.canary_pipeline) == ("", "", "")


def test_without_a_canary_the_run_goes_on_to_promotion_and_the_record_says_why() -> None:
    outcome = delivery.without_canary("digits", {"passed": True, "agreed": 38, "requests": 40})
    assert outcome.type == events.CANARY_SUCCEEDED
    why = "no canary in the manifest: promoted on the build alone; its smoke test passed (38/40 golden requests agreed)"
    assert outcome.record == {"canary": {"without_canary": why}}
    event = Event.new(outcome.type, "digits-20261207t000000z", outcome.data, source="//tests")  # the schema takes it
    assert event.data["without_canary"] == why
    assert "it has no smoke test either" in delivery.without_canary("digits", None).data["without_canary"]


def test_a_canary_succeeded_names_an_execution_or_why_there_was_none() -> None:
    with pytest.raises(InvalidEvent):
        Event.new(events.CANARY_SUCCEEDED, "digits-20261207t000000z", {"model": "digits"}, source="//tests")
