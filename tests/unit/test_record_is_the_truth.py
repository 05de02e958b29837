"""The record is the truth, an event is a doorbell: each stage checks what it requires of the run record before it
acts, and refuses (dead letter with the reason, noted on the run, status unchanged) a message that disagrees.

Each test plays an attacker with one model's rights, or a stale/forged message, against the in-memory ledger.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cd4ml import events
from cd4ml.events import Event, PubSubMessage, now
from cd4ml.stages import canary, delivery
from tests.stagekit import Kit, manifest

RUN = "digits-20300101t030000z"
REGISTRY = "registry.test/cd4ml"
BUILT = "sha256:" + "b" * 64
OTHER = "sha256:" + "e" * 64
MODEL_SHA = "a" * 64
ARTIFACT = {"uri": f"gs://artifacts/runs/{RUN}/model/model.joblib", "sha256": MODEL_SHA}


def _evaluated(**more: Any) -> dict[str, Any]:
    return {
        "manifest": manifest(),
        "model_artifact": ARTIFACT,
        "evaluation": {"passed": True, "metrics": {"accuracy": 0.97}, "gate": {"champion_run": None}},
        **more,
    }


def _built(**image: Any) -> dict[str, Any]:
    return _evaluated(image={"build_id": "build-1", "status": "SUCCESS", "digest": BUILT, **image})


def _refused(kit: Kit, before: dict[str, Any], *words: str) -> str:
    """The message was dead-lettered with a reason naming ``words``, noted on the run, and nothing else changed."""
    [dead] = kit.bus.dead_letters
    for word in words:
        assert word in dead.error
    after = kit.run(RUN)
    assert after["status"] == before["status"] == "running"
    assert after["rejected_messages"][-1]["reason"].startswith(dead.error[:200])
    assert kit.bus.published == []
    return dead.error


def _cleared(sha: str = MODEL_SHA) -> Event:
    return Event.new(
        events.DELIVERY_CLEARED,
        RUN,
        {"model": "digits", "model_artifact": {**ARTIFACT, "sha256": sha}, "metrics": {"accuracy": 0.97}},
        source="//t",
    )


def test_build_image_refuses_a_model_the_run_did_not_evaluate() -> None:
    kit = Kit("build_image")
    before = kit.seed(RUN, **_evaluated())
    kit.deliver(delivery.build_image, _cleared("f" * 64))
    _refused(kit, before, "names model sha256 ffffffffffff", "the run evaluated aaaaaaaaaaaa")
    assert kit.ledger.claim(RUN, "image-build") is None  # no build was submitted


def test_build_image_refuses_a_clearance_without_the_approval_the_run_asked_for() -> None:
    kit = Kit("build_image")
    asked = {"approvers": ["user:alice@example.com"], "requested_at": "2030-01-01T03:00:00.000Z"}
    before = kit.seed(RUN, **_evaluated(approval=asked))
    kit.deliver(delivery.build_image, _cleared())  # forged: nobody approved
    _refused(kit, before, "no approver's approve is recorded")
    assert kit.ledger.claim(RUN, "image-build") is None


def _build_message(build_id: str, status: str, digest: str = BUILT) -> PubSubMessage:
    image = f"{REGISTRY}/digits:{RUN}"
    build = {
        "id": build_id,
        "status": status,
        "tags": [f"cd4ml-run-{RUN}"],
        "images": [image],
        "results": {"images": [{"name": image, "digest": digest}]},
    }
    return PubSubMessage(
        message_id=f"b-{build_id}-{status}",
        publish_time=now(),
        attributes={"buildId": build_id, "status": status},
        data=json.dumps(build).encode(),
    )


def test_on_build_refuses_a_build_that_is_not_the_runs_recorded_build() -> None:
    # Another model's build (same build account) tagged with this run's id must not count as this run's image.
    kit = Kit("on_build", registry=REGISTRY)
    before = kit.seed(RUN, **_evaluated(image={"build_id": "build-1", "tag": f"{REGISTRY}/digits:{RUN}"}))
    kit.deliver(delivery.on_build, message=_build_message("build-evil", "SUCCESS", OTHER))
    _refused(kit, before, "the run's build is build-1")
    assert "status" not in kit.run(RUN)["image"]


def _push_message(digest: str, model: str = "digits") -> PubSubMessage:
    note = {"action": "INSERT", "digest": f"{REGISTRY}/{model}@{digest}", "tag": f"{REGISTRY}/{model}:{RUN}"}
    return PubSubMessage(
        message_id=f"p-{digest[-4:]}", publish_time=now(), attributes={}, data=json.dumps(note).encode()
    )


def test_on_push_refuses_a_digest_the_build_did_not_report() -> None:
    kit = Kit("on_push", registry=REGISTRY)
    before = kit.seed(RUN, **_built())
    kit.deliver(delivery.on_push, message=_push_message(OTHER))
    _refused(kit, before, f"its digest {OTHER[:19]} is not {BUILT[:19]}")
    kit.bus.dead_letters.clear()
    kit.deliver(delivery.on_push, message=_push_message(BUILT))
    assert kit.bus.types() == [events.IMAGE_PUSHED]
    assert kit.run(RUN)["image"]["reference"] == f"{REGISTRY}/digits@{BUILT}"


def test_a_push_noticed_before_the_build_is_announced_only_with_the_builds_digest() -> None:
    # The registry's notice usually comes before Cloud Build's SUCCESS: a planted push of another digest first must
    # not become the run's image; the real one is announced when the build reports it.
    pushes = Kit("on_push", registry=REGISTRY)
    pushes.seed(RUN, **_evaluated(image={"build_id": "build-1", "tag": f"{REGISTRY}/digits:{RUN}"}))
    pushes.deliver(delivery.on_push, message=_push_message(OTHER))
    pushes.deliver(delivery.on_push, message=_push_message(BUILT))
    assert pushes.bus.published == []
    builds = Kit("on_build", ledger=pushes.ledger, registry=REGISTRY)
    builds.deliver(delivery.on_build, message=_build_message("build-1", "SUCCESS"))
    assert builds.bus.types() == [events.IMAGE_BUILT, events.IMAGE_PUSHED]
    assert builds.bus.published[1].data["reference"] == f"{REGISTRY}/digits@{BUILT}"
    builds.deliver(delivery.on_build, message=_build_message("build-1", "SUCCESS"))  # redelivered: nothing twice
    assert len(builds.bus.published) == 2


def test_a_build_whose_only_push_was_planted_announces_no_image() -> None:
    pushes = Kit("on_push", registry=REGISTRY)
    pushes.seed(RUN, **_evaluated(image={"build_id": "build-1"}))
    pushes.deliver(delivery.on_push, message=_push_message(OTHER))
    builds = Kit("on_build", ledger=pushes.ledger, registry=REGISTRY)
    builds.deliver(delivery.on_build, message=_build_message("build-1", "SUCCESS"))
    assert builds.bus.types() == [events.IMAGE_BUILT]  # the canary waits for the build's own push


def test_trigger_canary_refuses_an_image_the_build_did_not_report() -> None:
    kit = Kit("trigger_canary", registry=REGISTRY, gate_url="http://gate.invalid")
    before = kit.seed(RUN, **_built(reference=f"{REGISTRY}/digits@{BUILT}"))
    forged = Event.new(
        events.IMAGE_PUSHED,
        RUN,
        {"model": "digits", "reference": f"{REGISTRY}/digits@{OTHER}", "tag": f"{REGISTRY}/digits:{RUN}"},
        source="//t",
    )
    kit.deliver(delivery.trigger_canary, forged)
    _refused(kit, before, f"the event names image {OTHER[:19]}", f"reported {BUILT[:19]}")
    assert kit.ledger.claim(RUN, "canary-webhook") is None  # Spinnaker was never called


@pytest.mark.parametrize("verdict", [None, "failed", "running"])
def test_promote_refuses_a_canary_succeeded_for_a_run_whose_canary_did_not_succeed(verdict: str | None) -> None:
    kit = Kit("promote", registry=REGISTRY, registry_api="http://registry.invalid")
    state = {"execution_id": "exec-1", "active": verdict == "running"}
    if verdict and verdict != "running":
        state["verdict"] = verdict
    before = kit.seed(RUN, **_built(reference=f"{REGISTRY}/digits@{BUILT}"), canary=state)
    forged = Event.new(events.CANARY_SUCCEEDED, RUN, {"model": "digits", "execution_id": "exec-1"}, source="//t")
    kit.deliver(canary.promote, forged)
    _refused(kit, before, "the run's canary verdict is", "not succeeded")
    assert kit.ledger.claim(RUN, "promotion") is None  # the alias was never moved
    assert kit.ledger.champion("digits") is None


def test_promote_refuses_another_executions_verdict() -> None:
    kit = Kit("promote", registry=REGISTRY, registry_api="http://registry.invalid")
    before = kit.seed(
        RUN,
        **_built(reference=f"{REGISTRY}/digits@{BUILT}"),
        canary={"execution_id": "exec-1", "verdict": "succeeded"},
    )
    other = Event.new(events.CANARY_SUCCEEDED, RUN, {"model": "digits", "execution_id": "exec-9"}, source="//t")
    kit.deliver(canary.promote, other)
    _refused(kit, before, "the run's canary is execution exec-1")


def test_a_champion_promoted_meanwhile_that_the_run_does_not_beat_stops_its_promotion() -> None:
    kit = Kit("promote", registry=REGISTRY, registry_api="http://registry.invalid")
    kit.seed(
        RUN,
        **_built(reference=f"{REGISTRY}/digits@{BUILT}"),
        canary={"execution_id": "exec-1", "verdict": "succeeded"},
    )
    better = {"run_id": "digits-20300101t040000z", "metrics": {"accuracy": 0.999}, "digest": OTHER}
    kit.ledger.store.create("models/digits", {"champion": better})
    succeeded = Event.new(events.CANARY_SUCCEEDED, RUN, {"model": "digits", "execution_id": "exec-1"}, source="//t")
    kit.deliver(canary.promote, succeeded)
    [ended] = kit.bus.published
    assert ended.type == events.RUN_FAILED and ended.data["cause"] == "champion_changed"
    assert "digits-20300101t040000z became champion after this run's evaluation" in ended.data["reason"]
    assert "regresses against champion" in ended.data["reason"]
    assert kit.run(RUN)["status"] == "failed"
    assert kit.ledger.champion("digits") == better  # the better champion stays
    assert kit.ledger.claim(RUN, "promotion") is None  # the alias was never moved
