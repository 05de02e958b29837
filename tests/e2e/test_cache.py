"""Train only what changed, and train when new data lands: a run on the champion's inputs is skipped without a job
or a build; --no-cache and changed data train again; a burst of uploads starts one run. Variants with their own
source prefix and a gate they fail at once keep this independent of other tests (and short)."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cd4ml import clients, events
from cd4ml.stages.delivery import RUN_TAG
from cd4ml.stages.training import RUN_LABEL
from tests.e2e.conftest import Pipeline

#: A long flow: `nox -s e2e` runs it (CI does), the README's test command does not.
pytestmark = pytest.mark.flow

REPO = Path(__file__).resolve().parents[2]
MODEL = "digits-cache"
SOURCE = f"sources/{MODEL}/"


def _jobs(pipeline: Pipeline, run_id: str) -> int:
    found = clients.job_service_client(pipeline.settings).list_custom_jobs(
        request={"parent": pipeline.settings.location, "filter": f'labels.{RUN_LABEL}="{run_id}"'}
    )
    return len(list(found))


def _builds(pipeline: Pipeline, run_id: str) -> int:
    found = clients.cloud_build_client(pipeline.settings).list_builds(
        project_id=pipeline.settings.project, filter=f'tags="{RUN_TAG}{run_id}"'
    )
    return len(list(found))


def _types(run: dict[str, Any]) -> list[str]:
    return [e["type"] for e in sorted(run["events"], key=lambda e: e["time"])]


def _wait_for(pipeline: Pipeline, run_id: str, field: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = pipeline.ledger.get(run_id) or {}
        if run.get(field):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} has no {field} after {timeout} s: {pipeline.ledger.get(run_id)}")


def test_a_run_on_the_champions_inputs_is_skipped_without_a_job_or_a_build(pipeline: Pipeline) -> None:
    # digits is shared: its first cached run either becomes champion or finds its model already is (skipped).
    first = pipeline.wait(pipeline.request("digits", cache=True), timeout=240)
    assert first["status"] in ("succeeded", "skipped"), first.get("error")
    champion = pipeline.ledger.champion("digits") or {}
    if first["status"] == "succeeded":
        assert champion["run_id"] == first["run_id"]
    second = pipeline.wait(pipeline.request("digits", pipeline.next_run_id("digits"), cache=True))
    assert second["status"] == "skipped", second.get("error")
    assert _jobs(pipeline, second["run_id"]) == 0 and _builds(pipeline, second["run_id"]) == 0
    assert second["training"]["state"] == "REUSED" and second["cache"]["training"]["reused_from"]
    assert second["cache"]["skipped"]["champion_run_id"] == champion["run_id"]
    assert second["model_artifact"]["sha256"] == champion["model_artifact"]["sha256"]
    assert _types(second)[-1] == events.RUN_SKIPPED and events.EVALUATION_PASSED not in _types(second)
    env = {"PATH": "/usr/bin:/bin", **pipeline.env, "CD4ML_STATE_DIR": str(pipeline.stack.root)}
    status = subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", "status", second["run_id"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=REPO,
    )
    assert status.returncode == 0, status.stderr
    assert f"cache training: reused from run {second['cache']['training']['reused_from']}" in status.stdout
    assert f"already the champion's, run {champion['run_id']}" in status.stdout


def _strict(source: str, **more: Any) -> Any:
    """A variant that fails its gate at once (so no build or canary is waited for), on its own source prefix."""

    def change(manifest: dict[str, Any]) -> None:
        manifest["data"]["source"]["gcs_prefix"] = source
        manifest["evaluation"]["threshold"] = 1.01  # above any accuracy, even on duplicated rows
        manifest.update(more)

    return change


def test_a_twin_that_is_not_champion_is_reused_and_no_cache_or_one_changed_byte_train_again(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    model = pipeline.push_variant(tmp_path, MODEL, _strict(SOURCE))
    first = pipeline.wait(pipeline.request(model, cache=True))
    assert first["cache"]["training"]["decision"] == "trained" and _jobs(pipeline, first["run_id"]) == 1
    again = pipeline.wait(pipeline.request(model, pipeline.next_run_id(model), cache=True))
    assert _jobs(pipeline, again["run_id"]) == 0 and again["cache"]["training"]["reused_from"] == first["run_id"]
    assert events.EVALUATION_FAILED in _types(again)  # no champion to skip to: evaluated like any candidate

    storage = pipeline.storage
    [blob] = [b for b in storage.list_blobs(pipeline.settings.data_bucket, prefix=SOURCE) if not b.name.endswith("/")]
    data = bytearray(blob.download_as_bytes())
    data[-2] = ord("0") if data[-2] != ord("0") else ord("1")  # the last row's label
    blob.upload_from_string(bytes(data))
    changed = pipeline.request(model, pipeline.next_run_id(model), cache=True)
    _wait_for(pipeline, changed, "training")
    forced = pipeline.request(model, pipeline.next_run_id(model))  # --no-cache
    changed_run, forced_run = pipeline.wait(changed), pipeline.wait(forced)
    assert changed_run["dataset"]["sha256"] != first["dataset"]["sha256"]
    assert _jobs(pipeline, changed) == 1 and changed_run["cache"]["training"]["decision"] == "trained"
    assert _jobs(pipeline, forced) == 1 and forced_run["cache"]["enabled"] is False
    assert forced_run["cache"]["training"]["decision"] == "off"


def _runs_on_new_data(pipeline: Pipeline, model: str) -> list[dict[str, Any]]:
    return [r for r in pipeline.ledger.recent(20, model) if r.get("trigger") == "new_data"]


def _await_runs(pipeline: Pipeline, model: str, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = _runs_on_new_data(pipeline, model)
        if len(runs) >= count and all(r["status"] != "running" for r in runs):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"{len(runs)} runs of {model} on new data after {timeout} s, expected {count}: {runs}")


def test_uploads_start_exactly_one_run_once_quiet_and_duplicated_notifications_start_none(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    from local_emulator.storage.notifications import message

    model, source, quiet = "digits-arrivals", "sources/digits-arrivals/", 3
    # Pushing the model seeds its source prefix: that upload alone starts one run.
    pushed = pipeline.push_variant(tmp_path, model, _strict(source, trigger={"on_new_data": {"quiet_seconds": quiet}}))
    [seeded] = _await_runs(pipeline, pushed, 1)
    bucket = pipeline.storage.bucket(pipeline.settings.data_bucket)
    text = bucket.blob(f"{source}digits.csv").download_as_text()
    for part in range(3):  # a burst, each upload well inside the quiet period of the one before
        bucket.blob(f"{source}more-{part}.csv").upload_from_string(text)
    last = bucket.get_blob(f"{source}more-2.csv")
    config = {"id": "1", "payload_format": "JSON_API_V1", "custom_attributes": {}}
    duplicate = message(config, "OBJECT_FINALIZE", last._properties)
    topic = pipeline.bus.topic_path("cd4ml-data-arrivals")
    for _ in range(2):  # Pub/Sub delivers at least once: the same notification again
        pipeline.bus.publisher.publish(topic, base64.b64decode(duplicate["data"]), **duplicate["attributes"]).result()
    runs = _await_runs(pipeline, pushed, 2)
    time.sleep(quiet + 3)  # nothing else comes
    runs = _runs_on_new_data(pipeline, pushed)
    assert len(runs) == 2, [r["run_id"] for r in runs]
    burst = next(r for r in runs if r["run_id"] != seeded["run_id"])
    assert burst["dataset"]["files"] == 4
    assert burst["scheduled_time"][:19] == last._properties["updated"][:19]
