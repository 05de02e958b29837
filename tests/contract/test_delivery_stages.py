"""Delivery stages through functions-framework, with Cloud Build's and Artifact Registry's own message formats."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from cd4ml import events, identities, runtime
from cd4ml.events import Event
from tests.contract.conftest import PROJECT, Contract
from tests.contract.test_stages import cleared_body, open_run, push_body
from tests.contract.test_stages import evaluated as record_evaluated


def _build_message(run_id: str, status: str, **build: Any) -> dict[str, Any]:
    data = {
        "id": f"build-{run_id}",
        "projectId": PROJECT,
        "status": status,
        "tags": [f"cd4ml-run-{run_id}"],
        "logUrl": f"https://console.cloud.google.com/cloud-build/builds/build-{run_id}",
        **build,
    }
    return push_body({"buildId": f"build-{run_id}", "status": status}, json.dumps(data).encode(), f"{run_id}-{status}")


def test_on_build_success_emits_image_built_with_the_digest(contract: Contract) -> None:
    run_id = "digits-20300201t000000z"
    open_run(contract, run_id, **{"image.build_id": f"build-{run_id}"})
    image = f"{os.environ['CD4ML_REGISTRY']}/digits:{run_id}"
    digest = "sha256:" + "a" * 64
    assert contract.post("on_build", _build_message(run_id, "WORKING"), "cloud-builds").status_code == 200
    assert contract.pull("cd4ml-image-built-v1", wait=1) == []  # progress is recorded, not announced
    body = _build_message(run_id, "SUCCESS", images=[image], results={"images": [{"name": image, "digest": digest}]})
    assert contract.post("on_build", body, "cloud-builds").status_code == 200
    [built] = contract.pull("cd4ml-image-built-v1")
    assert json.loads(built.data)["digest"] == digest
    run = contract.run(run_id)
    assert run is not None and run["image"]["status"] == "SUCCESS" and "WORKING" in run["image"]["progress"]


def test_on_build_failure_ends_the_run_with_the_log_reference(contract: Contract) -> None:
    run_id = "digits-20300202t000000z"
    open_run(contract, run_id, **{"image.build_id": f"build-{run_id}"})
    body = _build_message(run_id, "FAILURE", failureInfo={"type": "USER_BUILD_STEP", "detail": "step 0 exited 1"})
    assert contract.post("on_build", body, "cloud-builds").status_code == 200
    [failed] = contract.pull("cd4ml-image-failed-v1")
    assert json.loads(failed.data)["status"] == "FAILURE"
    run = contract.run(run_id)
    assert run is not None and run["status"] == "failed"
    assert "step 0 exited 1" in run["error"]["message"] and "cloud-build/builds/build-" in run["error"]["message"]


def test_on_build_ignores_builds_that_are_not_cd4ml_runs(contract: Contract) -> None:
    body = push_body({"buildId": "other", "status": "SUCCESS"}, json.dumps({"id": "other", "tags": []}).encode(), "o1")
    assert contract.post("on_build", body, "cloud-builds").status_code == 200
    assert contract.pull("cd4ml-image-built-v1", wait=1) == []


def test_on_push_maps_an_insert_to_its_run_and_ignores_deletes_and_strangers(contract: Contract) -> None:
    run_id = "digits-20300203t000000z"
    digest = "sha256:" + "b" * 64
    open_run(contract, run_id, image={"build_id": "b1", "status": "SUCCESS", "digest": digest})  # on_build's record
    repo = identities.image_repository(os.environ["CD4ML_REGISTRY"], "digits")
    for note in (
        {"action": "DELETE", "tag": f"{repo}:{run_id}"},
        {"action": "INSERT", "digest": f"elsewhere.io/x/y@{digest}", "tag": "elsewhere.io/x/y:1"},
        {"action": "INSERT", "digest": f"{repo}@{digest}", "tag": f"{repo}:digits-20990909t000000z"},
    ):
        assert contract.post("on_push", push_body({}, json.dumps(note).encode(), "n"), "gcr").status_code == 200
    assert contract.pull("cd4ml-image-pushed-v1", wait=1) == []
    note = {"action": "INSERT", "digest": f"{repo}@{digest}", "tag": f"{repo}:{run_id}"}
    assert contract.post("on_push", push_body({}, json.dumps(note).encode(), "n2"), "gcr").status_code == 200
    [pushed] = contract.pull("cd4ml-image-pushed-v1")
    assert json.loads(pushed.data)["reference"] == f"{repo}@{digest}"


def test_build_image_submits_one_build_however_often_delivered(contract: Contract) -> None:
    run_id = "digits-20300204t000000z"
    open_run(contract, run_id)
    model = b"the trained model"
    for attempt in range(3):
        body = cleared_body(run_id, model, f"passed-{attempt}")
        assert contract.post("build_image", body, "cd4ml-delivery-cleared-v1").status_code == 200
    builds = list(runtime.context().builds.list_builds(project_id=PROJECT, filter=f'tags="cd4ml-run-{run_id}"'))
    assert len(builds) == 1
    run = contract.run(run_id)
    assert run is not None and run["image"]["build_id"] == builds[0].id
    assert run["image"]["tag"].endswith(f"/digits:{run_id}")


def test_build_image_refuses_a_model_that_changed_since_evaluation(contract: Contract) -> None:
    """Issue 7.7: the trainer identity can write under runs/, so the build checks the sha256 that was evaluated."""
    run_id = "digits-20300205t000000z"
    open_run(contract, run_id)
    ctx = runtime.context()
    blob = ctx.storage.bucket("cd4ml-contract-artifacts").blob(f"runs/{run_id}/model/model.joblib")
    blob.upload_from_string(b"the evaluated model")
    evaluated = hashlib.sha256(b"the evaluated model").hexdigest()
    record_evaluated(run_id, f"gs://cd4ml-contract-artifacts/runs/{run_id}/model/model.joblib", evaluated)
    blob.upload_from_string(b"a model swapped in afterwards")
    passed = Event.new(
        events.DELIVERY_CLEARED,
        run_id,
        {
            "model": "digits",
            "metrics": {"accuracy": 0.97},
            "model_artifact": {
                "uri": f"gs://cd4ml-contract-artifacts/runs/{run_id}/model/model.joblib",
                "sha256": evaluated,
            },
        },
        source="//test",
    )
    data, attributes = passed.to_message()
    assert (
        contract.post("build_image", push_body(attributes, data, "swapped"), "cd4ml-delivery-cleared-v1").status_code
        == 200
    )
    assert list(ctx.builds.list_builds(project_id=PROJECT, filter=f'tags="cd4ml-run-{run_id}"')) == []
    [failed] = contract.pull("cd4ml-image-failed-v1")
    assert json.loads(failed.data)["status"] == "MODEL_CHANGED"
    run = contract.run(run_id)
    assert run is not None and run["status"] == "failed"
    assert f"not the {evaluated}" in run["error"]["message"]


def test_functions_use_the_named_firestore_database(contract: Contract) -> None:
    """Issue 7.3: Terraform's IAM condition and indexes name var.firestore_database; the ledger must open it."""
    from google.cloud import firestore

    run_id = "digits-20300206t000000z"
    os.environ["CD4ML_FIRESTORE_DATABASE"] = "ledger-named"
    try:
        open_run(contract, run_id)
        assert runtime.context().settings.firestore_database == "ledger-named"
        assert contract.run(run_id) is not None
    finally:
        del os.environ["CD4ML_FIRESTORE_DATABASE"]
        runtime.context.cache_clear()
    named = firestore.Client(project=PROJECT, database="ledger-named")
    default = firestore.Client(project=PROJECT)
    assert named.collection("runs").document(run_id).get().exists
    assert not default.collection("runs").document(run_id).get().exists
