"""The caches' decisions: the keys, reuse, skip, the image reuse, the opt-outs and how a run explains them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cd4ml_cli import timeline
from cd4ml_models import folder as models

from cd4ml import cache, events, transition
from cd4ml.events import Event
from cd4ml.manifest import parse
from cd4ml.payloads import Artifact, RunRequested, TrainingCompleted
from cd4ml.run import TERMINAL
from cd4ml.snapshot import Dataset
from cd4ml.stages import evaluation, fetch, training

RUN = "digits-20300101t030000z"
TWIN = "digits-20291231t030000z"
MANIFEST = models.read(Path(__file__).resolve().parents[2] / "examples" / "digits")
DATASET = Dataset(uri="gs://d/datasets/digits/a/", sha256="a" * 64, rows=10, bytes=99, files=1)
PACKAGES = {"gs://art/packages/digits/trainer-0.1.0.tar.gz": "md5:1B2M2Y8AsgTpgAmY7PhCfg=="}
MODEL = Artifact(uri=f"gs://art/runs/{TWIN}/model/model.joblib", sha256="b" * 64)


def _key(manifest: Any = MANIFEST, dataset_sha256: str = DATASET.sha256, packages: Any = None) -> str:
    return cache.training_key(manifest.name, dataset_sha256, packages or PACKAGES, cache.training_spec(manifest))


def _changed(change: Any) -> Any:
    raw = {**MANIFEST.raw, "training": {**MANIFEST.raw["training"]}}
    change(raw)
    return parse(raw)


# --- the training key ------------------------------------------------------------------------------------------


def test_the_training_key_is_stable_for_the_same_inputs() -> None:
    assert _key() == _key(parse(dict(MANIFEST.raw)))
    assert len(_key()) == 64


@pytest.mark.parametrize(
    "what",
    [
        "dataset",
        "package",
        "args",
        "hyperparameter",
        "executor_image",
        "module",
        "machine",
    ],
)
def test_any_input_of_the_training_changes_its_key(what: str) -> None:
    t = "training"
    changes: dict[str, Any] = {
        "dataset": lambda: _key(dataset_sha256="c" * 64),
        "package": lambda: _key(packages={k: "md5:other==" for k in PACKAGES}),
        "args": lambda: _key(_changed(lambda m: m[t].update(args=[*m[t]["args"], "--x=1"]))),
        "hyperparameter": lambda: _key(
            _changed(lambda m: m[t].update(hyperparameters={**m[t]["hyperparameters"], "n_estimators": 101}))
        ),
        "executor_image": lambda: _key(
            _changed(
                lambda m: m[t].update(
                    python_package={
                        **m[t]["python_package"],
                        "executor_image": "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-5:latest",
                    }
                )
            )
        ),
        "module": lambda: _key(
            _changed(lambda m: m[t].update(python_package={**m[t]["python_package"], "python_module": "trainer.other"}))
        ),
        "machine": lambda: _key(
            _changed(lambda m: m[t].update(worker_pool={**m[t]["worker_pool"], "machine_type": "n1-standard-8"}))
        ),
    }
    assert changes[what]() != _key()


def test_the_timeout_does_not_change_the_key_and_the_model_name_does() -> None:
    assert _key(_changed(lambda m: m["training"].update(timeout_seconds=60))) == _key()
    assert _key(_changed(lambda m: m.update(name="digits-b"))) != _key()


def test_the_package_hash_is_the_objects_own_md5_else_its_crc32c_else_none() -> None:
    assert cache.object_hash(SimpleNamespace(md5_hash="abc==", crc32c="x")) == "md5:abc=="
    assert cache.object_hash(SimpleNamespace(md5_hash=None, crc32c="AAAAAA==")) == "crc32c:AAAAAA=="
    assert cache.object_hash(SimpleNamespace(md5_hash=None, crc32c=None)) == ""
    assert cache.object_hash(None) == ""


# --- reuse -----------------------------------------------------------------------------------------------------


def test_reuse_needs_the_switch_a_key_and_an_earlier_success() -> None:
    entry = {"run_id": TWIN, "job": "projects/p/locations/l/customJobs/1", "model_artifact": MODEL.to_dict()}
    assert cache.reused(_key(), entry, on=True)[0] == TWIN
    assert cache.reused(_key(), entry, on=False) == ("", "cache off")
    assert cache.reused("", entry, on=True)[0] == ""
    assert cache.reused(_key(), None, on=True) == ("", "no earlier successful training with this key")


def test_a_reused_training_completes_at_once_with_its_twins_model_and_no_job() -> None:
    result = {
        "job": "projects/p/locations/l/customJobs/1",
        "refused": "",
        "key": _key(),
        "why": "same key",
        "decision": "reused",
        "reused_from": TWIN,
        "model_artifact": MODEL.to_dict(),
    }
    outcome = training.submitted(RUN, f"gs://art/runs/{RUN}/model/", DATASET, result, "digits")
    assert outcome.type == events.TRAINING_COMPLETED
    event = Event.new(events.TRAINING_COMPLETED, RUN, outcome.data, source="//t")  # schema-valid
    completed = TrainingCompleted.of(event)
    assert completed.reused_from == TWIN and completed.model_artifact == MODEL
    assert outcome.record["training.state"] == "REUSED" and outcome.record["training.active"] is False
    assert outcome.record["cache.training"] == {
        "key": _key(),
        "decision": "reused",
        "reused_from": TWIN,
        "reason": "same key",
    }


def test_a_trained_run_records_its_key_and_why_it_trained() -> None:
    why = "no earlier successful training with this key"
    result = {"job": "jobs/2", "refused": "", "key": _key(), "why": why, "decision": "trained"}
    outcome = training.submitted(RUN, f"gs://art/runs/{RUN}/model/", DATASET, result, "digits")
    assert outcome.type == events.TRAINING_SUBMITTED
    assert outcome.record["cache.training"]["decision"] == "trained"
    assert outcome.record["cache.training"]["key"] == _key()


# --- opting out ------------------------------------------------------------------------------------------------


def test_no_cache_on_the_request_or_cache_false_in_the_manifest_turns_the_caches_off() -> None:
    request = RunRequested(model="digits", scheduled_time=None, trigger="manual", no_cache=True)
    assert fetch.decide(request, DATASET, MANIFEST).record["cache.enabled"] is False
    assert "--no-cache" in fetch.decide(request, DATASET, MANIFEST).record["cache.disabled_by"]
    off = parse({**MANIFEST.raw, "cache": False})
    plain = dataclasses.replace(request, no_cache=False)
    assert fetch.decide(plain, DATASET, off).record["cache.disabled_by"] == "the manifest (cache: false)"
    assert fetch.decide(plain, DATASET, MANIFEST).record["cache.enabled"] is True
    event = Event.new(events.RUN_REQUESTED, "", {"model": "digits", "no_cache": True}, source="//cli")
    assert RunRequested.of(event).no_cache is True


def test_a_run_fetch_data_did_not_open_uses_no_cache() -> None:
    assert cache.enabled({}) is False
    assert cache.enabled({"enabled": False}) is False
    assert cache.enabled({"enabled": True}) is True


# --- nothing new, nothing delivered ----------------------------------------------------------------------------


def test_the_champions_own_model_ends_the_run_skipped_naming_the_champion() -> None:
    champion = {"run_id": TWIN, "model_artifact": MODEL.to_dict(), "metrics": {"accuracy": 0.97}}
    outcome = evaluation.skipped("digits", MODEL, champion, on=True)
    assert outcome is not None and outcome.type == events.RUN_SKIPPED
    Event.new(events.RUN_SKIPPED, RUN, outcome.data, source="//t")  # schema-valid
    assert outcome.data["champion_run_id"] == TWIN and TWIN in outcome.data["reason"]
    assert transition.status_after("running", events.RUN_SKIPPED) == "skipped" and "skipped" in TERMINAL


def test_another_model_or_no_champion_or_the_cache_off_goes_on_to_evaluation() -> None:
    champion = {"run_id": TWIN, "model_artifact": {"uri": MODEL.uri, "sha256": "c" * 64}}
    assert evaluation.skipped("digits", MODEL, champion, on=True) is None
    assert evaluation.skipped("digits", MODEL, None, on=True) is None
    same = {"run_id": TWIN, "model_artifact": MODEL.to_dict()}
    assert evaluation.skipped("digits", MODEL, same, on=False) is None


# --- the build cache -------------------------------------------------------------------------------------------

SERVING = [("Dockerfile", "md5:d=="), ("serve.py", "md5:s=="), ("smoke.jsonl", "md5:g==")]


def test_the_image_key_follows_the_model_the_serving_files_and_the_base_image() -> None:
    key = cache.image_key(MANIFEST, MODEL.sha256, SERVING, "e" * 64)
    assert key == cache.image_key(MANIFEST, MODEL.sha256, list(reversed(SERVING)), "e" * 64)
    assert key != cache.image_key(MANIFEST, "c" * 64, SERVING, "e" * 64)
    assert key != cache.image_key(MANIFEST, MODEL.sha256, [*SERVING[:2], ("smoke.jsonl", "md5:h==")], "e" * 64)
    rebased = parse({**MANIFEST.raw, "serving": {**MANIFEST.raw["serving"], "base_image": "python:3.12-slim"}})
    assert key != cache.image_key(rebased, MODEL.sha256, SERVING, "e" * 64)


def _image_run(run_id: str, key: str, **image: Any) -> dict[str, Any]:
    return {"run_id": run_id, "cache": {"image": {"key": key}}, "image": image, "created_at": "2030"}


def test_only_another_runs_built_and_pushed_image_with_the_key_is_reused() -> None:
    ref = "r/cd4ml/digits@sha256:" + "d" * 64
    pushed = _image_run(TWIN, "k", status="SUCCESS", reference=ref, build_id="b1")
    assert cache.reusable_image("k", [pushed], RUN) == pushed
    assert cache.reusable_image("k", [pushed], TWIN) is None  # its own
    assert cache.reusable_image("other", [pushed], RUN) is None
    failed = _image_run(TWIN, "k", status="FAILURE", reference=ref)
    building = _image_run(TWIN, "k", status="SUCCESS")
    assert cache.reusable_image("k", [failed, building], RUN) is None


# --- explaining it ---------------------------------------------------------------------------------------------


def test_status_explains_a_reuse_and_a_skip_with_the_key_and_the_twin() -> None:
    run = {
        "run_id": RUN,
        "model": "digits",
        "status": "skipped",
        "events": [],
        "cache": {
            "enabled": True,
            "training": {"key": _key(), "decision": "reused", "reused_from": TWIN, "reason": "same key"},
            "skipped": {"champion_run_id": TWIN, "reason": f"already the champion's, run {TWIN}"},
        },
    }
    text = timeline.render(run)
    assert f"cache training: reused from run {TWIN} (key {_key()[:16]}" in text
    assert f"skipped: already the champion's, run {TWIN}" in text
    off = timeline.render({**run, "cache": {"enabled": False, "disabled_by": "the request (--no-cache)"}})
    assert "cache: off, by the request (--no-cache)" in off
