"""The catalog: every stage consumes a known topic and emits known events; settings are documented once."""

from __future__ import annotations

from pathlib import Path

from cd4ml import catalog
from cd4ml.settings import Settings

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"


def test_every_stage_trigger_and_output_is_in_the_catalog() -> None:
    cat = catalog.load()
    for stage in cat.stages:
        inputs = set(cat.event_types) | set(cat.foreign_topics) | {n[0] for n in cat.notification_topics}
        inputs |= {catalog.dead_letter_topic(s.name) for s in cat.stages if s.name != stage.name}
        for trigger in stage.triggers:
            assert trigger in inputs, (stage.name, trigger)
        for emitted in stage.emits:
            assert emitted in cat.event_types, (stage.name, emitted)
        for name in stage.env:
            assert name in {s.name for s in cat.settings}, (stage.name, name)


def test_every_dead_letter_that_names_a_run_reaches_on_dead_letter() -> None:
    """A stage fed by a run's own events (ce-subject is the run) has its dead letters read by on_dead_letter, so a
    message whose last attempt crashed ends its run; ticks, Google's formats, decisions and observers do not."""
    cat = catalog.load()
    chain = {
        s.name
        for s in cat.stages
        if s.trigger.startswith(catalog.EVENT_PREFIX) and s.trigger != "cd4ml.watch.ticked.v1" and not s.observer
    }
    assert set(cat.stage("on_dead_letter").triggers) == {catalog.dead_letter_topic(s) for s in chain}


def test_settings_fields_are_exactly_the_catalog_settings() -> None:
    names = {f"CD4ML_{f.upper()}" for f in Settings.__dataclass_fields__}
    assert names == {s.name for s in catalog.load().settings}


def test_missing_required_settings_are_all_named() -> None:
    import pytest

    from cd4ml.errors import InvalidSettings

    with pytest.raises(InvalidSettings, match="CD4ML_PROJECT"):
        Settings.from_env({})


def test_every_schema_is_valid_json_schema() -> None:
    from jsonschema import Draft202012Validator

    for name in [*catalog.load().event_types, "manifest", "run"]:
        Draft202012Validator.check_schema(catalog.schema(name))


def test_the_deployed_requirements_pin_exactly_the_package_dependencies() -> None:
    import tomllib

    root = MAIN.parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [
        line.strip()
        for line in (MAIN.parent / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(pinned, key=str.lower) == sorted(declared, key=str.lower)


def test_on_build_is_given_the_registry_it_announces_an_early_push_with() -> None:
    """on_build announces a push the registry noticed before the build's SUCCESS (announce_push → pushed, which
    compares the pushed repository with ``settings.registry``): without CD4ML_REGISTRY in its environment the
    repository never matched, "push … matches no run; ignored", and the run waited at image.built for good (seen in
    the e2e regression test whenever the registry's notice came first)."""
    assert "CD4ML_REGISTRY" in catalog.load().stage("on_build").env
