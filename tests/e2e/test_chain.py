"""The chain on the local stack: schedule → data → Vertex training → evaluation gate, and its failures."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from local_emulator.spinnaker import tls as _gate_tls

from cd4ml import catalog, events
from cd4ml.events import Event
from cd4ml.ledger import run_id as ledger_run_id
from tests.e2e.conftest import Pipeline

REPO = Path(__file__).resolve().parents[2]


def _types(run: dict[str, Any]) -> list[str]:
    return [e["type"] for e in sorted(run["events"], key=lambda e: e["time"])]


def test_cli_run_wait_json_gives_a_complete_record(pipeline: Pipeline) -> None:
    env = {"PATH": "/usr/bin:/bin", **pipeline.env, "CD4ML_STATE_DIR": str(pipeline.stack.root)}
    done = subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", "run", "digits", "--wait", "--json", "--timeout", "240", "--no-cache"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    Draft202012Validator(catalog.schema("run")).validate(run)
    assert run["status"] == "succeeded"
    assert len(run["dataset"]["sha256"]) == 64 and run["dataset"]["uri"].startswith("gs://")
    assert run["dataset"]["rows"] == 1797
    assert run["training"]["job"].startswith("projects/cd4ml-local/locations/us-central1/customJobs/")
    assert run["training"]["state"] == "JOB_STATE_SUCCEEDED"
    assert run["model_artifact"]["uri"].endswith("/model/model.joblib") and len(run["model_artifact"]["sha256"]) == 64
    assert run["evaluation"]["passed"] is True and run["evaluation"]["metrics"]["accuracy"] >= 0.9
    seen = _types(run)
    for milestone in (
        events.RUN_REQUESTED,
        events.DATA_FETCHED,
        events.TRAINING_SUBMITTED,
        events.TRAINING_COMPLETED,
        events.EVALUATION_PASSED,
        events.DELIVERY_CLEARED,
        events.IMAGE_BUILT,
        events.IMAGE_PUSHED,
        events.CANARY_TRIGGERED,
        events.CANARY_SUCCEEDED,
        events.MODEL_PROMOTED,
    ):
        assert milestone in seen
    assert run["image"]["digest"].startswith("sha256:") and run["canary"]["execution_id"]
    assert run["promotion"]["digest"] == run["image"]["digest"]
    # Confirmed and watched through a Gate that authenticates reads (x509, as Gate with auth on): without the
    # functions' client certificate the same read is refused.
    execution = f"{pipeline.stack.endpoints['gate']}/pipelines/{run['canary']['execution_id']}"
    anonymous = ssl.create_default_context(cafile=str(pipeline.stack.root / "gate" / "tls" / "ca.pem"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(execution, timeout=5, context=anonymous)
    assert refused.value.code == 403
    with urllib.request.urlopen(execution, timeout=5, context=_gate_tls.client_context(pipeline.stack.root)) as read:
        assert json.loads(read.read())["status"] == "SUCCEEDED"
    assert "data.fetched" in done.stderr and "model.promoted" in done.stderr  # the live timeline
    models = subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", "models", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=REPO,
    )
    assert models.returncode == 0, models.stderr
    [digits] = [m for m in json.loads(models.stdout) if m["model"] == "digits"]
    assert digits["run_id"] == run["run_id"] and digits["digest"] == run["image"]["digest"]


def test_unreachable_threshold_ends_evaluation_failed_with_metric_and_threshold(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    model = pipeline.push_variant(tmp_path, "digits-strict", lambda m: m["evaluation"].update(threshold=0.9999))
    run = pipeline.wait(pipeline.request(model))
    assert run["status"] == "failed"
    assert _types(run)[-1] == events.EVALUATION_FAILED
    assert run["evaluation"]["gate"]["threshold"] == 0.9999
    assert 0.5 < run["evaluation"]["metrics"]["accuracy"] < 0.9999
    assert "below the threshold" in run["error"]["message"]
    time.sleep(3)  # nothing comes after a failed gate
    assert _types(pipeline.ledger.get(run["run_id"]) or {}) == _types(run)


def test_a_crashing_trainer_ends_training_failed_with_the_job_error(pipeline: Pipeline, tmp_path: Path) -> None:
    model = pipeline.push_variant(tmp_path, "digits-crash", lambda m: m["training"]["args"].append("--crash"))
    run = pipeline.wait(pipeline.request(model))
    assert run["status"] == "failed"
    assert _types(run)[-1] == events.TRAINING_FAILED
    assert run["training"]["state"] == "JOB_STATE_FAILED"
    assert "trainer crashed on purpose" in run["training"]["error"]
    assert "trainer crashed on purpose" in run["error"]["message"]


@pytest.mark.flow
def test_the_same_data_fetched_three_times_yields_one_training_job(pipeline: Pipeline) -> None:
    from cd4ml import clients, ledger
    from cd4ml.manifest import loads
    from cd4ml.stages.training import RUN_LABEL

    first = pipeline.wait(pipeline.request("digits"))
    run_id = ledger.run_id("digits", datetime(2031, 1, 1, tzinfo=UTC))
    manifest = loads((REPO / "examples" / "digits" / "manifest.yaml").read_text())
    opening = Event.new(events.RUN_REQUESTED, run_id, {"model": "digits"}, source="//tests")
    pipeline.ledger.open_run(
        run_id, model="digits", scheduled_time=opening.time, trigger="manual", manifest=manifest.raw, event=opening
    )
    fetched = Event.new(events.DATA_FETCHED, run_id, {"model": "digits", "dataset": first["dataset"]}, source="//tests")
    for _ in range(3):
        pipeline.bus.publish(fetched)
    run = pipeline.wait(run_id)
    assert run["status"] == "succeeded"
    jobs = clients.job_service_client(pipeline.settings).list_custom_jobs(
        request={"parent": pipeline.settings.location, "filter": f'labels.{RUN_LABEL}="{run_id}"'}
    )
    assert len(list(jobs)) == 1  # counted at the local Vertex AI, not in the ledger
    assert _types(run).count(events.TRAINING_SUBMITTED) == 1


def test_a_scheduler_message_and_its_duplicate_make_one_run(pipeline: Pipeline) -> None:
    from local_emulator.scheduler import scheduler_attributes

    publisher = pipeline.bus.publisher
    topic = pipeline.bus.topic_path(catalog.topic_id(events.RUN_REQUESTED))
    attributes = scheduler_attributes(pipeline.settings.project, "cd4ml-digits", events.RUN_REQUESTED)
    for _ in range(2):
        publisher.publish(topic, json.dumps({"model": "digits", "trigger": "schedule"}).encode(), **attributes).result()
    deadline = time.monotonic() + 60
    runs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        runs = [r for r in pipeline.ledger.recent(50, "digits") if r.get("trigger") == "schedule"]
        if runs and runs[0]["status"] != "running":
            break
        time.sleep(0.5)
    assert len(runs) == 1
    assert runs[0]["scheduled_time"].endswith("T03:00:00.000Z")  # the manifest's 03:00 slot
    assert _types(runs[0]).count(events.RUN_REQUESTED) == 1


def test_an_unknown_model_is_dead_lettered_with_the_reason_and_opens_no_run(pipeline: Pipeline) -> None:
    run_id = pipeline.request("nosuchmodel")
    reasons = pipeline.dead_lettered("fetch_data", run_id, timeout=30)
    assert any("unknown model 'nosuchmodel'" in r and "no manifest at gs://" in r for r in reasons)
    assert pipeline.ledger.get(run_id) is None


def test_a_run_that_stops_making_progress_is_ended_failed(pipeline: Pipeline) -> None:
    from google.cloud import firestore

    from cd4ml.events import format_time
    from cd4ml.manifest import loads

    run_id = ledger_run_id("digits", datetime(2032, 1, 1, tzinfo=UTC))
    manifest = loads((REPO / "examples" / "digits" / "manifest.yaml").read_text())
    opening = Event.new(events.RUN_REQUESTED, run_id, {"model": "digits"}, source="//tests")
    pipeline.ledger.open_run(
        run_id, model="digits", scheduled_time=opening.time, trigger="manual", manifest=manifest.raw, event=opening
    )
    long_ago = datetime.now(UTC) - timedelta(seconds=catalog.load().stale_after_seconds + 60)
    # As if its data.fetched had been lost hours ago: the next watch tick ends it.
    firestore.Client(project=pipeline.settings.project).collection("runs").document(run_id).update(
        {"updated_at": format_time(long_ago)}
    )
    run = pipeline.wait(run_id, timeout=30)
    assert run["status"] == "failed"
    assert "no progress for" in run["error"]["message"] and "run.requested" in run["error"]["message"]
