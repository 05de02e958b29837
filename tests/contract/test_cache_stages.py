"""The build cache through functions-framework: an image built for the same model and serving inputs is reused by
digest (no second build), and the chain continues as after a push."""

from __future__ import annotations

import json
from typing import Any

from cd4ml import runtime
from tests.contract.conftest import PROJECT, Contract
from tests.contract.test_stages import cleared_body, open_run

MODEL = b"a model built once"


def _cleared(run_id: str) -> dict[str, Any]:
    return cleared_body(run_id, MODEL)


def _builds(run_id: str) -> int:
    return len(list(runtime.context().builds.list_builds(project_id=PROJECT, filter=f'tags="cd4ml-run-{run_id}"')))


def test_the_same_model_and_serving_inputs_reuse_the_image_by_digest_without_a_build(contract: Contract) -> None:
    built, twin = "digits-20300301t000000z", "digits-20300302t000000z"
    for run_id in (built, twin):
        open_run(contract, run_id)
        runtime.context().ledger.note(run_id, {"cache.enabled": True})
    assert contract.post("build_image", _cleared(built), "cd4ml-delivery-cleared-v1").status_code == 200
    assert _builds(built) == 1
    key = (contract.run(built) or {})["cache"]["image"]["key"]
    reference = f"127.0.0.1:5000/cd4ml/digits@sha256:{'d' * 64}"
    runtime.context().ledger.note(
        built, {"image.status": "SUCCESS", "image.reference": reference}
    )  # as on_build/on_push

    assert contract.post("build_image", _cleared(twin), "cd4ml-delivery-cleared-v1").status_code == 200
    assert _builds(twin) == 0
    [image_built] = [m for m in contract.pull("cd4ml-image-built-v1") if m.attributes["ce-subject"] == twin]
    [pushed] = [m for m in contract.pull("cd4ml-image-pushed-v1") if m.attributes["ce-subject"] == twin]
    built_data, pushed_data = json.loads(image_built.data), json.loads(pushed.data)
    assert built_data["reused_from"] == built and built_data["digest"] == "sha256:" + "d" * 64
    assert pushed_data["reference"] == reference and pushed_data["reused_from"] == built
    assert pushed_data["tag"].endswith(f"/digits:{built}")  # the twin's tag: its image is the one reused
    run = contract.run(twin) or {}
    assert run["image"]["status"] == "SUCCESS" and run["image"]["reference"] == reference
    assert run["cache"]["image"] == {
        "key": key,
        "decision": "reused",
        "reused_from": built,
        "reason": f"image of {built}",
    }
