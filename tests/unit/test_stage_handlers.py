"""Each stage's handler, delivered a real message through ``runtime.dispatch`` against the in-memory ledger.

What a user would notice: the event a stage emits (its type, its data, valid against its schema), the run record
after it, nothing more on a duplicate delivery, a refusal dead-lettered with its reason. Google and Spinnaker are
faked at their API boundary only: Vertex AI's JobServiceClient (``ctx.jobs``, returning ``aiplatform_v1`` messages),
Cloud Storage in memory (tests/stagekit.py) and Gate's ``GET /pipelines/{id}`` (``spinnaker.GateClient``).
The last test holds every registered stage to having such a test.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api_core import exceptions
from google.cloud.aiplatform_v1 import types

from cd4ml import events, spinnaker
from cd4ml.errors import RetryableError
from cd4ml.events import Event, PubSubMessage, data_problems, format_time, now, parse_time, plain
from cd4ml.run import AWAITING_APPROVAL, RunId
from cd4ml.stages import STAGES, approval, arrival, canary, evaluation, fetch, training
from tests.stagekit import PROJECT, REPO, Kit, MemoryStorage, manifest

RUN = "digits-20300101t030000z"
LOCATION = f"projects/{PROJECT}/locations/us-central1"
SCHEDULER = f"//cloudscheduler.googleapis.com/projects/{PROJECT}/locations/us-central1/jobs"
DATASET = {"uri": "gs://data/datasets/digits/" + "d" * 64 + "/", "sha256": "d" * 64, "rows": 3, "bytes": 36, "files": 2}
MODEL_BYTES = b"a fitted random forest"
MODEL_SHA = hashlib.sha256(MODEL_BYTES).hexdigest()
ARTIFACT = {"uri": f"gs://artifacts/runs/{RUN}/model/model.joblib", "sha256": MODEL_SHA}
PACKAGE = ("artifacts", "packages/digits/trainer-0.1.0.tar.gz")


def _emitted(kit: Kit, type_: str) -> Event:
    """The one event the stage published, of ``type_``, whose data its published schema accepts."""
    assert kit.bus.types() == [type_], kit.bus.types()
    [event] = kit.bus.published
    assert data_problems(type_, plain(event.data)) == []
    return event


def _scheduler(type_: str, data: Mapping[str, Any], job: str, message_id: str = "7001") -> PubSubMessage:
    """A message as Cloud Scheduler publishes it (terraform/catalog.tf): static attributes, no ce-id, ce-time or
    ce-subject (the handler takes the message id and publish time)."""
    attributes = {
        "ce-specversion": "1.0",
        "ce-type": type_,
        "ce-source": f"{SCHEDULER}/{job}",
        "content-type": "application/json",
    }
    return PubSubMessage(
        message_id=message_id, publish_time=now(), attributes=attributes, data=json.dumps(data).encode()
    )


def _tick(message_id: str = "9001") -> PubSubMessage:
    return _scheduler(events.WATCH_TICKED, {}, "cd4ml-watch-tick", message_id)


def _golden(name: str) -> PubSubMessage:
    """A golden push body of the contract tests (tests/contract/golden), as Pub/Sub delivers it."""
    return PubSubMessage.from_push(json.loads((REPO / "tests" / "contract" / "golden" / name).read_text()))


def _push_manifest(storage: MemoryStorage, document: Mapping[str, Any]) -> None:
    """``cd4ml model push``'s manifest object: gs://ARTIFACTS/manifests/MODEL.yaml."""
    storage.put("artifacts", f"manifests/{document['name']}.yaml", yaml.safe_dump(dict(document)).encode())


# --- fetch_data --------------------------------------------------------------------------------------------------

PART_1 = b"pixel,label\n1,0\n2,1\n"
PART_2 = b"pixel,label\n3,2\n"


def _fetch_kit(storage: MemoryStorage | None = None, **kwargs: Any) -> Kit:
    kit = Kit("fetch_data", storage=storage, **kwargs)
    _push_manifest(kit.storage, manifest())
    return kit


def _source_data(storage: MemoryStorage) -> None:
    storage.put("data", "sources/digits/part-1.csv", PART_1)
    storage.put("data", "sources/digits/part-2.csv", PART_2)


def test_fetch_data_opens_the_scheduled_run_and_snapshots_its_data_by_content() -> None:
    kit = _fetch_kit()
    _source_data(kit.storage)
    kit.deliver(fetch.fetch_data, message=_golden("run_requested_from_scheduler.json"))
    run_id = "digits-20260101t030000z"  # the manifest's 03:00 slot at or before the publish time
    fetched = _emitted(kit, events.DATA_FETCHED)
    sums = "".join(
        f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in (("part-1.csv", PART_1), ("part-2.csv", PART_2))
    )
    sha = hashlib.sha256(sums.encode()).hexdigest()
    dataset = {"uri": f"gs://data/datasets/digits/{sha}/", "sha256": sha, "rows": 3, "bytes": 36, "files": 2}
    assert fetched.subject == run_id and plain(fetched.data) == {"model": "digits", "dataset": dataset}
    record = kit.run(run_id)
    assert record["status"] == "running" and record["trigger"] == "schedule"
    assert record["dataset"] == dataset and record["cache"]["enabled"] is True
    assert [e["type"] for e in record["events"]] == [events.RUN_REQUESTED, events.DATA_FETCHED]
    assert kit.storage.objects[("data", f"datasets/digits/{sha}/part-2.csv")][0] == PART_2
    assert kit.storage.objects[("data", f"datasets/digits/{sha}/SHA256SUMS")][0] == sums.encode()
    kit.deliver(fetch.fetch_data, message=_golden("run_requested_from_scheduler.json"))  # Pub/Sub redelivers
    assert len(kit.bus.published) == 1 and kit.bus.dead_letters == []


def test_fetch_data_honours_a_no_cache_request_and_a_request_for_a_run_that_ended_does_nothing() -> None:
    kit = _fetch_kit()
    _source_data(kit.storage)
    yesterday = now().replace(hour=3, minute=0, second=0, microsecond=0) - timedelta(days=1)
    run_id, ended = str(RunId.of("digits", yesterday)), str(RunId.of("digits", yesterday - timedelta(days=1)))
    data = {"model": "digits", "scheduled_time": format_time(yesterday), "trigger": "manual", "no_cache": True}
    kit.deliver(fetch.fetch_data, Event.new(events.RUN_REQUESTED, run_id, data, source="//cd4ml-cli"))
    _emitted(kit, events.DATA_FETCHED)
    cache = kit.run(run_id)["cache"]
    assert cache["enabled"] is False and cache["disabled_by"] == "the request (--no-cache)"
    kit.seed(ended, status="failed", error={"stage": "evaluate", "message": "below threshold"})
    again = {**data, "scheduled_time": format_time(yesterday - timedelta(days=1))}
    kit.deliver(fetch.fetch_data, Event.new(events.RUN_REQUESTED, ended, again, source="//cd4ml-cli"))
    assert len(kit.bus.published) == 1 and kit.bus.dead_letters == []
    assert kit.run(ended)["status"] == "failed" and kit.run(ended)["error"]["message"] == "below threshold"


def test_fetch_data_dead_letters_a_request_for_an_unknown_model_and_opens_no_run() -> None:
    kit = Kit("fetch_data")  # no manifest pushed
    kit.deliver(fetch.fetch_data, message=_golden("run_requested_valid.json"))
    [dead] = kit.bus.dead_letters
    assert (
        dead.error == "unknown model 'digits': no manifest at gs://artifacts/manifests/digits.yaml"
        and dead.topic == kit.ctx.settings.dead_letter_topic
    )
    assert kit.bus.published == [] and kit.ledger.get("digits-20260101t030000z") is None


def test_fetch_data_refuses_a_manifest_stored_under_another_models_name() -> None:
    kit = Kit("fetch_data")
    kit.storage.put("artifacts", "manifests/digits.yaml", yaml.safe_dump(manifest(name="iris")).encode())
    _source_data(kit.storage)
    kit.deliver(fetch.fetch_data, message=_golden("run_requested_valid.json"))
    [dead] = kit.bus.dead_letters
    assert dead.error == (
        "invalid gs://artifacts/manifests/digits.yaml: name: 'iris' is not 'digits', the model it is stored for"
    )
    assert kit.bus.published == [] and kit.ledger.get("digits-20260101t030000z") is None


def test_fetch_data_dead_letters_a_model_without_data_and_notes_it_on_the_run() -> None:
    kit = _fetch_kit()  # a manifest, nothing under its data source
    kit.deliver(fetch.fetch_data, message=_golden("run_requested_valid.json"))
    [dead] = kit.bus.dead_letters
    assert dead.error == "no data for model 'digits': no objects under gs://data/sources/digits/"
    record = kit.run("digits-20260101t030000z")
    assert record["status"] == "running" and kit.bus.published == []  # a corrected upload and a replay go on
    assert record["rejected_messages"][0]["reason"] == dead.error


# --- Vertex AI at its API boundary -------------------------------------------------------------------------------


def _state(name: str) -> types.JobState:
    found: types.JobState = getattr(types.JobState, name)
    return found


class FakeVertex:
    """JobServiceClient's create/list/get of CustomJobs, answering ``aiplatform_v1`` messages as Vertex does."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.created: list[Any] = []
        self.refusal: Exception | None = None
        self.outage = False

    def create_custom_job(self, *, parent: str, custom_job: Any, **options: Any) -> Any:
        if self.refusal is not None:
            raise self.refusal
        self.created.append(custom_job)
        job = types.CustomJob(custom_job)
        job.name = f"{parent}/customJobs/{4000 + len(self.jobs)}"
        job.state = _state("JOB_STATE_PENDING")
        self.jobs[job.name] = job
        return job

    def list_custom_jobs(self, *, request: Mapping[str, str], **options: Any) -> list[Any]:
        match = re.fullmatch(r'labels\.([a-z0-9_-]+)="([^"]*)"', request["filter"])
        assert match, f"a filter Vertex would not take as a label match: {request['filter']!r}"
        key, value = match.groups()
        prefix = request["parent"] + "/customJobs/"
        return [j for n, j in self.jobs.items() if n.startswith(prefix) and j.labels.get(key) == value]

    def get_custom_job(self, *, name: str, **options: Any) -> Any:
        if self.outage:
            raise exceptions.ServiceUnavailable("The service is currently unavailable.")  # type: ignore[no-untyped-call]
        if name not in self.jobs:
            raise exceptions.NotFound(f"CustomJob {name} not found")  # type: ignore[no-untyped-call]
        return self.jobs[name]

    def running(self, run_id: str) -> str:
        """A job of ``run_id`` Vertex is running; its name."""
        job = types.CustomJob(display_name=f"cd4ml-{run_id}", labels={training.RUN_LABEL: run_id})
        job.name = f"{LOCATION}/customJobs/{4000 + len(self.jobs)}"
        job.state = _state("JOB_STATE_RUNNING")
        self.jobs[job.name] = job
        return str(job.name)

    def end(self, name: str, state: str, error: str = "") -> None:
        self.jobs[name].state = _state(state)
        if error:
            self.jobs[name].error = {"code": 3, "message": error}


def _training_kit(stage: str, vertex: FakeVertex, kit: Kit | None = None) -> Kit:
    """A stage's kit on ``kit``'s ledger and storage (a fresh one without), Vertex being ``vertex``."""
    found = Kit(stage, kit.ledger if kit else None, kit.storage if kit else None)
    found.ctx.jobs = vertex
    return found


def _fetched(kit: Kit, run_id: str = RUN) -> Event:
    """The run as fetch_data leaves it (manifest, dataset, cache on) and its data.fetched."""
    kit.seed(run_id, manifest=manifest(), dataset=DATASET, cache={"enabled": True})
    kit.storage.put(*PACKAGE, b"trainer package bytes")
    return Event.new(events.DATA_FETCHED, run_id, {"model": "digits", "dataset": DATASET}, source="//fetch_data")


# --- submit_training ---------------------------------------------------------------------------------------------


def test_submit_training_creates_one_labelled_custom_job_for_the_runs_dataset() -> None:
    vertex = FakeVertex()
    kit = _training_kit("submit_training", vertex)
    fetched = _fetched(kit)
    kit.deliver(training.submit_training, fetched)
    [job] = vertex.jobs
    submitted = _emitted(kit, events.TRAINING_SUBMITTED)
    assert plain(submitted.data) == {
        "model": "digits",
        "job": job,
        "dataset_sha256": "d" * 64,
        "model_dir": f"gs://artifacts/runs/{RUN}/model/",
    }
    [sent] = vertex.created
    assert sent.labels[training.RUN_LABEL] == RUN
    assert sent.job_spec.base_output_directory.output_uri_prefix == f"gs://artifacts/runs/{RUN}/"
    package = sent.job_spec.worker_pool_specs[0].python_package_spec
    assert package.python_module == "trainer.task"
    assert list(package.package_uris) == ["gs://artifacts/packages/digits/trainer-0.1.0.tar.gz"]
    assert list(package.args) == ["--test-size=0.25", "--seed=7", "--max_depth=12", "--n_estimators=100"]
    assert {e.name: e.value for e in package.env}["CD4ML_DATASET_URI"] == DATASET["uri"]
    assert sent.job_spec.scheduling.timeout.total_seconds() == 900
    record = kit.run(RUN)
    assert record["training"]["job"] == job and record["training"]["active"] is True
    assert record["training"]["state"] == "JOB_STATE_QUEUED"
    assert record["cache"]["training"]["decision"] == "trained" and len(record["cache"]["training"]["key"]) == 64
    kit.deliver(training.submit_training, fetched)  # redelivered: no second job, nothing announced twice
    assert len(vertex.created) == 1 and len(kit.bus.published) == 1


def test_submit_training_after_a_crash_finds_the_job_by_its_label_instead_of_creating_another() -> None:
    vertex = FakeVertex()
    kit = _training_kit("submit_training", vertex)
    fetched = _fetched(kit)
    job = vertex.running(RUN)  # created by a delivery that died before recording it
    claim = {"state": "claimed", "claimed_at": "2030-01-01T03:01:00.000Z", "lease_until": "2000-01-01T00:00:00.000Z"}
    assert kit.ledger.store.create(f"runs/{RUN}/effects/training-job", {**claim, "holder": "dead"})
    kit.deliver(training.submit_training, fetched)
    assert vertex.created == []
    assert _emitted(kit, events.TRAINING_SUBMITTED).data["job"] == job
    assert kit.run(RUN)["training"]["job"] == job


def test_a_job_vertex_refuses_fails_the_run_with_vertexs_reason() -> None:
    vertex = FakeVertex()
    vertex.refusal = exceptions.InvalidArgument("Machine type n1-standard-4 is not supported.")  # type: ignore[no-untyped-call]
    kit = _training_kit("submit_training", vertex)
    kit.deliver(training.submit_training, _fetched(kit))
    failed = _emitted(kit, events.TRAINING_FAILED)
    reason = "Vertex AI refused the job: Machine type n1-standard-4 is not supported."
    assert plain(failed.data) == {"model": "digits", "state": "NOT_SUBMITTED", "error": reason}
    record = kit.run(RUN)
    assert record["status"] == "failed" and record["error"] == {"stage": "submit_training", "message": reason}
    assert kit.bus.dead_letters == []


def test_submit_training_dead_letters_a_data_fetched_that_breaks_its_schema() -> None:
    vertex = FakeVertex()
    kit = _training_kit("submit_training", vertex)
    good = _fetched(kit)
    data, attributes = good.to_message()
    broken = json.loads(data)
    broken["dataset"]["sha256"] = "not-a-digest"
    message = PubSubMessage(
        message_id="6001", publish_time=now(), attributes=attributes, data=json.dumps(broken).encode()
    )
    kit.deliver(training.submit_training, message=message)
    [dead] = kit.bus.dead_letters
    assert dead.error.startswith(f"invalid event {events.DATA_FETCHED} in message 6001: ")
    assert "not-a-digest" in dead.error
    assert vertex.created == [] and kit.bus.published == []
    record = kit.run(RUN)
    assert record["status"] == "running" and record["rejected_messages"][0]["reason"] == dead.error


# --- watch_training ----------------------------------------------------------------------------------------------


def _in_flight(kit: Kit, vertex: FakeVertex, run_id: str = RUN, **fields: Any) -> str:
    job = vertex.running(run_id)
    kit.seed(run_id, manifest=manifest(), training={"job": job, "state": "JOB_STATE_QUEUED", "active": True}, **fields)
    return job


def _trained(storage: MemoryStorage, run_id: str = RUN) -> None:
    """What the trainer leaves in AIP_MODEL_DIR: the model and its metrics."""
    storage.put("artifacts", f"runs/{run_id}/model/model.joblib", MODEL_BYTES)
    metrics = {"metrics": {"accuracy": 0.97}, "model_sha256": MODEL_SHA}
    storage.put("artifacts", f"runs/{run_id}/model/metrics.json", json.dumps(metrics).encode())


def test_watch_training_reports_a_finished_job_once_with_the_model_it_left() -> None:
    vertex = FakeVertex()
    kit = _training_kit("watch_training", vertex)
    job = _in_flight(kit, vertex)
    kit.deliver(training.watch_training, message=_tick())
    assert kit.bus.published == [] and kit.run(RUN)["training"]["state"] == "JOB_STATE_RUNNING"  # progress, noted
    _trained(kit.storage)
    vertex.end(job, "JOB_STATE_SUCCEEDED")
    kit.deliver(training.watch_training, message=_tick("9002"))
    completed = _emitted(kit, events.TRAINING_COMPLETED)
    assert completed.subject == RUN and plain(completed.data) == {
        "model": "digits",
        "job": job,
        "model_artifact": ARTIFACT,
    }
    record = kit.run(RUN)
    assert record["training"]["active"] is False and record["training"]["state"] == "JOB_STATE_SUCCEEDED"
    assert record["model_artifact"] == ARTIFACT and record["status"] == "running"
    kit.deliver(training.watch_training, message=_tick("9003"))  # the next tick: the job is no longer in flight
    assert len(kit.bus.published) == 1


def test_watch_training_rides_out_a_vertex_outage_and_notes_since_when() -> None:
    vertex = FakeVertex()
    kit = _training_kit("watch_training", vertex)
    job = _in_flight(kit, vertex)
    vertex.outage = True
    kit.deliver(training.watch_training, message=_tick())  # not raised: the other runs and the next tick go on
    assert kit.bus.published == [] and kit.bus.dead_letters == []
    assert kit.run(RUN)["status"] == "running" and kit.run(RUN)["training"]["unreadable_since"]
    vertex.outage = False
    _trained(kit.storage)
    vertex.end(job, "JOB_STATE_SUCCEEDED")
    kit.deliver(training.watch_training, message=_tick("9002"))
    _emitted(kit, events.TRAINING_COMPLETED)
    assert kit.run(RUN)["training"]["unreadable_since"] == ""


def test_watch_training_fails_the_run_of_a_failed_job_with_vertexs_error() -> None:
    vertex = FakeVertex()
    kit = _training_kit("watch_training", vertex)
    job = _in_flight(kit, vertex)
    vertex.end(job, "JOB_STATE_FAILED", "The replica workerpool0-0 exited with a non-zero status of 1.")
    kit.deliver(training.watch_training, message=_tick())
    failed = _emitted(kit, events.TRAINING_FAILED)
    assert failed.data["state"] == "JOB_STATE_FAILED"
    assert failed.data["error"] == "The replica workerpool0-0 exited with a non-zero status of 1."
    record = kit.run(RUN)
    assert record["status"] == "failed" and record["training"]["active"] is False
    assert record["error"]["message"].startswith(f"training job {job} ended JOB_STATE_FAILED: The replica")


def test_a_succeeded_job_that_left_no_model_fails_its_run_naming_what_it_left() -> None:
    vertex = FakeVertex()
    kit = _training_kit("watch_training", vertex)
    job = _in_flight(kit, vertex)
    kit.storage.put("artifacts", f"runs/{RUN}/model/metrics.json", b"{}")
    vertex.end(job, "JOB_STATE_SUCCEEDED")
    kit.deliver(training.watch_training, message=_tick())
    failed = _emitted(kit, events.TRAINING_FAILED)
    assert failed.data["error"] == (
        f"the trainer must leave exactly one model.* file in gs://artifacts/runs/{RUN}/model/: found metrics.json"
    )
    assert kit.run(RUN)["status"] == "failed"


def test_a_training_a_later_run_repeats_is_reused_without_a_second_job() -> None:
    vertex = FakeVertex()
    submit = _training_kit("submit_training", vertex)
    submit.deliver(training.submit_training, _fetched(submit))
    [job] = vertex.jobs
    _trained(submit.storage)
    vertex.end(job, "JOB_STATE_SUCCEEDED")
    watch = _training_kit("watch_training", vertex, submit)
    watch.deliver(training.watch_training, message=_tick())
    _emitted(watch, events.TRAINING_COMPLETED)
    later = "digits-20300102t030000z"  # the same data, trainer package and spec the next day
    submit.deliver(training.submit_training, _fetched(submit, later))
    assert len(vertex.created) == 1
    reused = submit.bus.published[-1]
    assert reused.type == events.TRAINING_COMPLETED and reused.subject == later
    assert reused.data["reused_from"] == RUN and reused.data["model_artifact"] == ARTIFACT
    assert reused.data["cache_key"] == submit.run(RUN)["cache"]["training"]["key"]
    assert data_problems(reused.type, plain(reused.data)) == []
    record = submit.run(later)
    assert record["training"]["state"] == "REUSED" and record["cache"]["training"]["decision"] == "reused"


# --- evaluate ----------------------------------------------------------------------------------------------------


def _evaluate_kit(accuracy: float | None = 0.97, model_sha256: str = MODEL_SHA) -> tuple[Kit, Event]:
    kit = Kit("evaluate")
    kit.seed(RUN, manifest=manifest(), cache={"enabled": True}, model_artifact=ARTIFACT)
    if accuracy is not None:
        metrics = {"metrics": {"accuracy": accuracy}, "model_sha256": model_sha256}
        kit.storage.put("artifacts", f"runs/{RUN}/model/metrics.json", json.dumps(metrics).encode())
    data = {"model": "digits", "job": f"{LOCATION}/customJobs/4000", "model_artifact": ARTIFACT}
    return kit, Event.new(events.TRAINING_COMPLETED, RUN, data, source="//watch_training")


def _champion(kit: Kit, accuracy: float, sha256: str = "c" * 64) -> None:
    champion = {
        "run_id": "digits-20291231t030000z",
        "metrics": {"accuracy": accuracy},
        "model_artifact": {"uri": "gs://artifacts/runs/digits-20291231t030000z/model/model.joblib", "sha256": sha256},
        "since": "2029-12-31T04:00:00.000Z",
        "digest": "sha256:" + "e" * 64,
    }
    assert kit.ledger.store.create("models/digits", {"champion": champion})


def test_evaluate_passes_a_candidate_above_the_threshold_once() -> None:
    kit, completed = _evaluate_kit(0.97)
    kit.deliver(evaluation.evaluate, completed)
    passed = _emitted(kit, events.EVALUATION_PASSED)
    assert passed.data["metrics"] == {"accuracy": 0.97} and passed.data["model_artifact"] == ARTIFACT
    assert passed.data["gate"]["passed"] is True
    evaluated = kit.run(RUN)["evaluation"]
    assert evaluated["passed"] is True and evaluated["reasons"] == [] and kit.run(RUN)["status"] == "running"
    kit.deliver(evaluation.evaluate, completed)
    assert len(kit.bus.published) == 1


@pytest.mark.parametrize(
    ("accuracy", "champion", "why"),
    [
        (0.85, None, "accuracy 0.8500 is below the threshold 0.9000"),
        (0.96, 0.99, "regresses against champion digits-20291231t030000z (0.9900) by 0.0300"),
        (None, None, "the trainer wrote no metrics.json beside the model"),
    ],
)
def test_evaluate_fails_the_run_naming_why(accuracy: float | None, champion: float | None, why: str) -> None:
    kit, completed = _evaluate_kit(accuracy)
    if champion is not None:
        _champion(kit, champion)
    kit.deliver(evaluation.evaluate, completed)
    failed = _emitted(kit, events.EVALUATION_FAILED)
    assert any(why in reason for reason in failed.data["reasons"]), failed.data["reasons"]
    record = kit.run(RUN)
    assert record["status"] == "failed" and why in record["error"]["message"]
    assert record["evaluation"]["passed"] is False


def test_evaluate_refuses_metrics_that_describe_another_model() -> None:
    kit, completed = _evaluate_kit(0.99, model_sha256="f" * 64)
    kit.deliver(evaluation.evaluate, completed)
    failed = _emitted(kit, events.EVALUATION_FAILED)
    assert f"describes model {'f' * 64}, not the artifact {MODEL_SHA}" in failed.data["reasons"][0]


def test_evaluate_skips_a_candidate_that_is_the_champions_model_byte_for_byte() -> None:
    kit, completed = _evaluate_kit(0.97)
    _champion(kit, 0.97, sha256=MODEL_SHA)
    kit.deliver(evaluation.evaluate, completed)
    skipped = _emitted(kit, events.RUN_SKIPPED)
    assert skipped.data["champion_run_id"] == "digits-20291231t030000z" and skipped.data["model_sha256"] == MODEL_SHA
    assert kit.run(RUN)["status"] == "skipped"


def test_evaluate_dead_letters_an_event_for_a_run_the_ledger_does_not_know() -> None:
    kit, completed = _evaluate_kit()
    stranger = Event.new(events.TRAINING_COMPLETED, "digits-20300105t030000z", dict(completed.data), source="//x")
    kit.deliver(evaluation.evaluate, stranger)
    [dead] = kit.bus.dead_letters
    assert "names run 'digits-20300105t030000z', which the ledger does not know" in dead.error
    assert kit.bus.published == [] and kit.ledger.get("digits-20300105t030000z") is None


# --- note_arrival and start_on_data ------------------------------------------------------------------------------

WATCHING = manifest(trigger={"on_new_data": {"quiet_seconds": 30}})


def _notification(name: str, age_seconds: float, bucket: str = "data", **changes: str) -> PubSubMessage:
    """Cloud Storage's notification of an upload ``age_seconds`` ago, payload JSON_API_V1 (pubsub-notifications)."""
    at = format_time(now() - timedelta(seconds=age_seconds))
    generation = "1767268800250000"
    attributes = {
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": generation,
        "eventTime": at,
        **changes,
    }
    resource = {"kind": "storage#object", "bucket": bucket, "name": name, "generation": generation, "updated": at}
    return PubSubMessage(
        message_id="5001", publish_time=now(), attributes=attributes, data=json.dumps(resource).encode()
    )


def _arrival_kit() -> Kit:
    kit = Kit("note_arrival")
    _push_manifest(kit.storage, WATCHING)
    _push_manifest(kit.storage, manifest(name="iris", data={"source": {"gcs_prefix": "sources/iris/"}}))
    return kit


def test_note_arrival_records_the_latest_upload_of_the_model_that_watches_its_prefix() -> None:
    kit = _arrival_kit()
    upload = _notification("sources/digits/part-3.csv", 5)
    kit.deliver(arrival.note_arrival, message=upload)
    [noted] = kit.ledger.arrivals(("pending", "==", True))
    assert noted["model"] == "digits" and noted["object"] == "gs://data/sources/digits/part-3.csv"
    assert noted["last_upload"] == upload.attributes["eventTime"] and noted["quiet_seconds"] == 30
    kit.deliver(arrival.note_arrival, message=upload)  # a duplicate notification
    kit.deliver(arrival.note_arrival, message=_notification("sources/digits/part-0.csv", 60))  # an older upload
    assert kit.ledger.arrivals(("pending", "==", True)) == [noted]
    assert kit.bus.published == [] and kit.bus.dead_letters == []


@pytest.mark.parametrize(
    "notice",
    [
        _notification("sources/iris/part-1.csv", 5),  # iris does not ask for runs on new data
        _notification("datasets/digits/" + "a" * 64 + "/part-1.csv", 5),  # fetch_data's own snapshot
        _notification("sources/digits/part-1.csv", 5, eventType="OBJECT_DELETE"),
        _notification("sources/digits/part-1.csv", 5, bucket="elsewhere"),
    ],
)
def test_note_arrival_ignores_what_is_no_watched_models_new_data(notice: PubSubMessage) -> None:
    kit = _arrival_kit()
    kit.deliver(arrival.note_arrival, message=notice)
    assert kit.ledger.arrivals(("pending", "==", True)) == [] and kit.bus.dead_letters == []


def test_note_arrival_watches_the_folder_fetch_data_snapshots_even_when_the_prefix_has_no_slash() -> None:
    # fetch_data snapshots gs://data/sources/digits/ for `gcs_prefix: sources/digits` (the schema allows it): an
    # upload beside that folder (sources/digits-archive/) is no new data of the model, and must start no run.
    kit = Kit("note_arrival")
    _push_manifest(kit.storage, {**WATCHING, "data": {"source": {"gcs_prefix": "sources/digits"}}})
    kit.deliver(arrival.note_arrival, message=_notification("sources/digits-archive/part-1.csv", 5))
    kit.deliver(arrival.note_arrival, message=_notification("sources/digits.csv", 5))
    assert kit.ledger.arrivals(("pending", "==", True)) == []
    kit.deliver(arrival.note_arrival, message=_notification("sources/digits/part-1.csv", 5))
    assert [a["object"] for a in kit.ledger.arrivals(("pending", "==", True))] == [
        "gs://data/sources/digits/part-1.csv"
    ]


def test_note_arrival_dead_letters_a_message_that_is_not_a_storage_notification() -> None:
    kit = _arrival_kit()
    kit.deliver(arrival.note_arrival, message=_tick())
    [dead] = kit.bus.dead_letters
    assert dead.error.startswith("not a Cloud Storage notification: attribute bucketId is missing;")
    assert dead.stage == "note_arrival"
    assert kit.ledger.arrivals(("pending", "==", True)) == []


def test_new_data_quiet_long_enough_requests_one_run_that_fetch_data_opens() -> None:
    note = _arrival_kit()
    upload = _notification("sources/digits/part-3.csv", 45)
    note.deliver(arrival.note_arrival, message=upload)
    start = Kit("start_on_data", note.ledger, note.storage)
    start.deliver(arrival.start_on_data, message=_tick())
    requested = _emitted(start, events.RUN_REQUESTED)
    uploaded = parse_time(upload.attributes["eventTime"]).replace(microsecond=0)
    run_id = str(RunId.of("digits", uploaded))
    assert requested.subject == run_id
    assert plain(requested.data) == {"model": "digits", "scheduled_time": format_time(uploaded), "trigger": "new_data"}
    start.deliver(arrival.start_on_data, message=_tick("9002"))  # the next tick: that upload has its run
    assert len(start.bus.published) == 1
    fetcher = _fetch_kit(note.storage, ledger=note.ledger)
    _source_data(note.storage)
    fetcher.deliver(fetch.fetch_data, requested)
    assert fetcher.bus.types() == [events.DATA_FETCHED]
    assert fetcher.run(run_id)["trigger"] == "new_data"


def test_start_on_data_waits_while_uploads_are_not_quiet() -> None:
    note = _arrival_kit()
    note.deliver(arrival.note_arrival, message=_notification("sources/digits/part-3.csv", 5))
    start = Kit("start_on_data", note.ledger, note.storage)
    start.deliver(arrival.start_on_data, message=_tick())
    assert start.bus.published == []
    assert note.ledger.arrivals(("pending", "==", True))[0]["requested_for"] == ""


# --- watch_approvals ---------------------------------------------------------------------------------------------

GATED = "gated-20300101t030000z"
POLICY = {"gated": {"approvers": ["user:alice@example.com"], "expires_after": "72h"}}


def _waiting(kit: Kit, run_id: str, requested_hours_ago: float, expires_after_hours: float) -> None:
    requested = now() - timedelta(hours=requested_hours_ago)
    kit.seed(
        run_id,
        status=AWAITING_APPROVAL,
        manifest=manifest(name="gated"),
        model_artifact=ARTIFACT,
        approval={
            "approvers": ["user:alice@example.com"],
            "requested_at": format_time(requested),
            "expires_at": format_time(requested + timedelta(hours=expires_after_hours)),
            "metrics": {"accuracy": 0.97},
            "gate": {},
        },
    )


def test_watch_approvals_rejects_an_expired_request_once_and_leaves_open_ones_waiting() -> None:
    kit = Kit("watch_approvals", approval_policy=json.dumps(POLICY))
    _waiting(kit, GATED, requested_hours_ago=73, expires_after_hours=72)
    _waiting(kit, "gated-20300102t030000z", requested_hours_ago=1, expires_after_hours=72)
    kit.deliver(approval.watch_approvals, message=_tick())
    rejected = _emitted(kit, events.RUN_REJECTED)
    assert rejected.subject == GATED
    assert rejected.data["by"] == "expiry" and rejected.data["expired"] is True
    assert rejected.data["reason"].startswith("no approver decided before the request expired at ")
    record = kit.run(GATED)
    assert record["status"] == "rejected" and record["approval"]["decision"] == "expired"
    assert kit.run("gated-20300102t030000z")["status"] == AWAITING_APPROVAL
    kit.deliver(approval.watch_approvals, message=_tick("9002"))
    assert len(kit.bus.published) == 1


def test_watch_approvals_applies_a_deployed_policys_shorter_expiry_to_a_waiting_run() -> None:
    shorter = {"gated": {**POLICY["gated"], "expires_after": "24h"}}
    kit = Kit("watch_approvals", approval_policy=json.dumps(shorter))
    _waiting(kit, GATED, requested_hours_ago=25, expires_after_hours=72)  # recorded under the 72 h policy
    kit.deliver(approval.watch_approvals, message=_tick())
    assert _emitted(kit, events.RUN_REJECTED).data["expired"] is True
    assert kit.run(GATED)["status"] == "rejected"


# --- watch_canary ------------------------------------------------------------------------------------------------

EXECUTION = "01HZX3CANARY"


class FakeGate:
    """Gate's ``GET /pipelines/{id}`` as ``spinnaker.GateClient.execution`` returns it (Orca's execution)."""

    def __init__(self) -> None:
        self.executions: dict[str, dict[str, Any]] = {}
        self.down = False
        self.asked: list[str] = []

    def client(self, url: str, *args: Any, **kwargs: Any) -> FakeGate:
        assert url == "https://gate.test"
        return self

    def execution(self, execution_id: str) -> dict[str, Any]:
        self.asked.append(execution_id)
        if self.down:
            raise RetryableError(f"could not read Spinnaker execution {execution_id}: connection refused")
        return self.executions[execution_id]


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> FakeGate:
    fake = FakeGate()
    monkeypatch.setattr(spinnaker, "GateClient", fake.client)
    return fake


def _canary_kit(deadline_minutes: float = 30) -> Kit:
    kit = Kit("watch_canary", gate_url="https://gate.test", gate_auth="none")
    digest = "sha256:" + "b" * 64
    kit.seed(
        RUN,
        manifest=manifest(),
        model_artifact=ARTIFACT,
        image={"build_id": "b-1", "status": "SUCCESS", "digest": digest, "reference": f"registry.test/digits@{digest}"},
        canary={
            "active": True,
            "event_id": "e-1",
            "execution_id": EXECUTION,
            "application": "digits",
            "pipeline": "digits-canary",
            "status": "RUNNING",
            "deadline": format_time(now() + timedelta(minutes=deadline_minutes)),
        },
    )
    return kit


def _execution(status: str, *stages: tuple[str, str]) -> dict[str, Any]:
    return {
        "id": EXECUTION,
        "application": "digits",
        "name": "digits-canary",
        "status": status,
        "stages": [{"name": n, "type": "wait", "status": s} for n, s in stages],
    }


def test_watch_canary_announces_a_succeeded_execution_once(gate: FakeGate) -> None:
    kit = _canary_kit()
    gate.executions[EXECUTION] = _execution("RUNNING", ("Deploy canary", "SUCCEEDED"), ("Analysis", "RUNNING"))
    kit.deliver(canary.watch_canary, message=_tick())
    assert kit.bus.published == [] and kit.run(RUN)["canary"]["active"] is True
    gate.executions[EXECUTION] = _execution("SUCCEEDED", ("Deploy canary", "SUCCEEDED"), ("Analysis", "SUCCEEDED"))
    kit.deliver(canary.watch_canary, message=_tick("9002"))
    succeeded = _emitted(kit, events.CANARY_SUCCEEDED)
    assert plain(succeeded.data) == {
        "model": "digits",
        "execution_id": EXECUTION,
        "application": "digits",
        "pipeline": "digits-canary",
    }
    record = kit.run(RUN)
    assert record["canary"]["active"] is False and record["canary"]["verdict"] == "succeeded"
    assert record["status"] == "running"  # promote ends it
    kit.deliver(canary.watch_canary, message=_tick("9003"))
    assert len(kit.bus.published) == 1 and gate.asked == [EXECUTION, EXECUTION]


def test_watch_canary_fails_the_run_naming_the_stage_that_ended_the_execution(gate: FakeGate) -> None:
    kit = _canary_kit()
    _champion(kit, 0.96)
    gate.executions[EXECUTION] = _execution("TERMINAL", ("Deploy canary", "SUCCEEDED"), ("Canary analysis", "TERMINAL"))
    kit.deliver(canary.watch_canary, message=_tick())
    failed = _emitted(kit, events.CANARY_FAILED)
    assert failed.data["stage"] == "Canary analysis" and failed.data["status"] == "TERMINAL"
    assert failed.data["previous_run_id"] == "digits-20291231t030000z"  # what a rollback returns to
    assert failed.data["previous_digest"] == "sha256:" + "e" * 64
    record = kit.run(RUN)
    assert record["status"] == "failed" and record["canary"]["verdict"] == "failed"
    assert record["error"]["message"] == (
        f"Spinnaker execution {EXECUTION} of digits-canary ended TERMINAL at stage 'Canary analysis'"
    )


def test_watch_canary_waits_while_gate_is_down_and_ends_the_run_at_the_deadline(gate: FakeGate) -> None:
    gate.down = True
    kit = _canary_kit(deadline_minutes=30)
    kit.deliver(canary.watch_canary, message=_tick())
    assert kit.bus.published == [] and kit.run(RUN)["status"] == "running"
    kit.ledger.note(RUN, {"canary.deadline": format_time(now() - timedelta(minutes=1))})
    kit.deliver(canary.watch_canary, message=_tick("9002"))
    failed = _emitted(kit, events.CANARY_FAILED)
    assert failed.data["status"] == "DEADLINE"
    assert "had not ended by its deadline" in failed.data["reason"]
    assert kit.run(RUN)["status"] == "failed" and kit.run(RUN)["canary"]["active"] is False


# --- every stage has such a test ---------------------------------------------------------------------------------


def driven(sources: Iterable[Path]) -> tuple[set[str], set[str]]:
    """What unit tests drive as functions-framework would: handlers given to ``deliver(module.function, ...)``, and
    stages served by ``create_app("stage", ...)`` (functions/main.py's entry point, as the HTTP stage is)."""
    delivered: set[str] = set()
    served: set[str] = set()
    for source in sources:
        text = source.read_text()
        if "deliver(" not in text and "create_app(" not in text:
            continue
        for node in ast.walk(ast.parse(text, str(source))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            first = node.args[0]
            if name == "deliver":
                delivered.add(ast.unparse(first))
            elif name == "create_app" and isinstance(first, ast.Constant) and isinstance(first.value, str):
                served.add(first.value)
    return delivered, served


def untested(sources: Iterable[Path]) -> list[str]:
    """The registered stages no unit test drives through its handler."""
    delivered, served = driven(sources)
    return [s.name for s in STAGES if s.handler.replace(":", ".") not in delivered and s.name not in served]


def test_every_registered_stage_has_a_handler_level_unit_test() -> None:
    sources = sorted(Path(__file__).parent.glob("test_*.py"))
    missing = untested(sources)
    assert missing == [], (
        f"stages {', '.join(missing)} have no unit test delivering an event to their handler: add one that calls "
        "kit.deliver(<module>.<function>, ...) (tests/stagekit.py)"
    )
    others = [p for p in sources if p.name != Path(__file__).name]
    assert "watch_canary" in untested(others)  # this file's scenarios are what cover it: the scan sees them
