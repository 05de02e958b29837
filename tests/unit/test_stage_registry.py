"""The registry of stages: every catalog stage is declared once, exported by main.py, and held to its catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from cd4ml import catalog, events, runtime, stages
from cd4ml.outcome import Outcome
from tests.stagekit import Kit

MAIN = Path(__file__).resolve().parents[2] / "functions" / "main.py"


def test_the_registry_declares_exactly_the_catalogs_stages_in_its_order() -> None:
    assert [s.name for s in stages.STAGES] == [s.name for s in catalog.load().stages]


def test_main_exports_one_entry_point_per_stage_of_the_signature_its_catalog_entry_says() -> None:
    """functions-framework finds each stage's target in main.py (as Cloud Functions' build does) and registers it
    with the signature the catalog says (HTTP for decide_approval, CloudEvent for the rest)."""
    from functions_framework import _function_registry, create_app

    for stage in catalog.load().stages:
        kind = _function_registry.HTTP_SIGNATURE_TYPE if stage.http else _function_registry.CLOUDEVENT_SIGNATURE_TYPE
        create_app(stage.name, str(MAIN), kind)  # type: ignore[no-untyped-call]
        assert _function_registry.REGISTRY_MAP[stage.name] == kind, stage.name


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_every_registered_handler_loads(stage: stages.Stage) -> None:
    assert callable(stage.load())


def test_a_stage_cannot_emit_an_event_its_catalog_entry_does_not_declare() -> None:
    """evaluate emits evaluation.* (catalog); asked to emit model.promoted it raises and nothing is recorded or
    published: only the declared events leave a stage."""
    kit = Kit("evaluate")
    kit.seed("digits-20260101t000000z")
    with pytest.raises(runtime.Undeclared, match=r"may not emit cd4ml\.model\.promoted\.v1"):
        kit.ctx.conclude("digits-20260101t000000z", Outcome.event(events.MODEL_PROMOTED, {"model": "digits"}, {}))
    assert kit.bus.published == []
    assert kit.run("digits-20260101t000000z")["events"] == []


def test_the_record_checks_a_stage_applies_are_the_ones_it_registers() -> None:
    assert stages.stage("promote").requires  # canary verdict and built image: the record is the truth
    with pytest.raises(KeyError, match="stages are fetch_data"):
        stages.stage("nope")


def test_no_stage_publishes_or_dead_letters_but_through_the_runtime() -> None:
    """Publishing is the runtime's (conclude's outbox, request_run, reject's dead letter): a stage module never
    touches the bus, so no event leaves a stage unrecorded or undeclared."""
    import ast

    folder = Path(stages.__file__).parent
    offenders = [
        f"{path.name}:{node.lineno}"
        for path in sorted(folder.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "bus"
    ]
    assert offenders == []


@pytest.mark.parametrize("field", ["status", "events", "outbox", "published"])
def test_a_stage_cannot_write_what_only_conclude_changes(field: str) -> None:
    """A note or a record of facts naming the run's status, events or outbox is refused: the run stays as it was."""
    kit = Kit("watch_training")
    kit.seed("digits-20260101t000000z")
    with pytest.raises(ValueError, match=r"only through Context\.conclude"):
        kit.ledger.note("digits-20260101t000000z", {field: "succeeded"})
    with pytest.raises(ValueError, match=r"only through Context\.conclude"):
        kit.ledger.record("digits-20260101t000000z", fields={f"{field}.x": 1})
    assert kit.run("digits-20260101t000000z")["status"] == "running"


def test_a_stage_acts_only_through_its_registered_effect() -> None:
    """Side effects go through ``Context.once`` (the stage's registered effect, at most once per run): no stage module
    calls ``Ledger.once`` itself, and a stage that registers no effect cannot run one."""
    import ast

    folder = Path(stages.__file__).parent
    direct = [
        f"{path.name}:{node.lineno}"
        for path in sorted(folder.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "once"
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ledger"
    ]
    assert direct == []
    assert {s.name for s in stages.STAGES if s.effect} == {
        "submit_training",
        "build_image",
        "trigger_canary",
        "promote",
        "notify",
    }
    kit = Kit("evaluate")
    kit.seed("digits-20260101t000000z")
    with pytest.raises(runtime.Undeclared, match="registers no effect"):
        kit.ctx.once("digits-20260101t000000z", lambda: {"done": True})
