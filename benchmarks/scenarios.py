"""A realistic first event for each stage: a push body that makes the stage take its real path through its clients.

Each stage gets a run of its own in the state it expects, so its handler does the work and the side
effect, never the "already done" shortcut of a duplicate (which would not build the clients a cold start
must pay for). The events are those Pub/Sub would push, in the emulator's push format; the foreign ones
(``cloud-builds``, ``gcr``) are rendered by the local stand-ins' own code. What a probe emits continues
through the stack like any run's events.

The scenarios of one pass depend on each other in catalog order: submit_training takes the dataset
fetch_data wrote; watch_training waits until the jobs of both runs finished at Vertex (the ticks are held),
so its tick reads them and the models; evaluate, build_image and trigger_canary reuse that model and its
evaluation.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from local_emulator.scheduler import scheduler_attributes

from benchmarks.pipeline import SOURCE, Pipeline
from cd4ml import catalog, events, ledger
from cd4ml.events import Event, PubSubMessage, format_time, now
from cd4ml.run import TERMINAL
from cd4ml.stages.delivery import RUN_TAG
from cd4ml.stages.training import FINISHED


@dataclass(frozen=True)
class Probe:
    """A push request for one stage: where to POST and what."""

    stage: str
    path: str
    body: Mapping[str, Any]
    run_id: str = ""
    #: HTTP headers of the request (the decision endpoint's ID token).
    headers: Mapping[str, str] = field(default_factory=dict)


class Scenarios:
    """First events for one pass over the stages (call them in catalog order)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.opened: list[str] = []
        #: Runs whose probe leaves them open by design (an image built or pushed, never both).
        self.left_open: list[str] = []
        self._fetched = ""
        self._submitted = ""
        self._evaluated = ""
        self._built = ""

    def probe(self, stage: str) -> Probe:
        """The first event of ``stage``, its run prepared."""
        makers: dict[str, Callable[[], Probe]] = {
            "fetch_data": self._fetch_data,
            "submit_training": self._submit_training,
            "watch_training": self._watch_training,
            "evaluate": self._evaluate,
            "build_image": self._build_image,
            "on_build": self._on_build,
            "on_push": self._on_push,
            "trigger_canary": self._trigger_canary,
            "clear_delivery": self._clear_delivery,
            "decide_approval": self._decide_approval,
            "watch_approvals": self._watch_approvals,
            "notify": self._notify,
            "note_arrival": self._note_arrival,
            "start_on_data": self._tick("start_on_data"),
            "watch_canary": self._tick("watch_canary"),
            "promote": self._promote,
            "on_dead_letter": self._on_dead_letter,
        }
        if stage not in makers:
            raise KeyError(f"the bench has no first event for stage {stage!r}: add one to benchmarks/scenarios.py")
        return makers[stage]()

    def settle(self, stage: str, timeout: float = 180.0) -> None:
        """Wait until what the stage's probe set going through the stack came to rest (the ticks being held)."""
        if stage == "fetch_data":
            self._await_jobs([self._fetched], timeout)
        elif stage == "submit_training":
            self._await_jobs([self._submitted], timeout)
        elif stage in ("watch_training", "evaluate", "build_image"):
            runs = {
                "watch_training": [self._fetched, self._submitted],
                "evaluate": [self._evaluated],
                "build_image": [self._built],
            }[stage]
            deadline = time.monotonic() + timeout
            while True:
                found = self.p.records(runs)
                if all(_at_rest(found.get(r)) for r in runs):
                    break
                if time.monotonic() > deadline:
                    where = "; ".join(
                        f"{r}: {(found.get(r) or {}).get('status')} after "
                        f"{[e.get('type') for e in (found.get(r) or {}).get('events', [])][-1:]}"
                        for r in runs
                    )
                    raise RuntimeError(
                        f"runs did not come to rest within {timeout:.0f} s of the {stage} probe: {where}"
                    )
                time.sleep(0.1)

    def _push(self, stage: str, data: bytes, attributes: Mapping[str, str], run_id: str = "") -> Probe:
        project = self.p.settings.project
        topic = catalog.load().stage(stage).trigger_topic
        message = PubSubMessage(
            message_id=str(uuid.uuid4().int % 10**16),
            publish_time=now(),
            attributes=attributes,
            data=data,
            subscription=f"projects/{project}/subscriptions/{catalog.subscription_id(stage)}",
        )
        return Probe(stage, f"/projects/{project}/topics/{topic}", message.to_push(), run_id)

    def _event(self, stage: str, type_: str, run_id: str, data: Mapping[str, Any]) -> Probe:
        body, attributes = Event.new(type_, run_id, data, source=SOURCE).to_message()
        return self._push(stage, body, attributes, run_id)

    def _open(self, stays_open: bool = False) -> str:
        run_id = self.p.open_run()
        self.opened.append(run_id)
        if stays_open:
            self.left_open.append(run_id)
        return run_id

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self.p.ledger.get(run_id)
        if run is None:
            raise RuntimeError(f"run {run_id} is not in the ledger")
        return run

    def _image(self, run_id: str) -> tuple[str, str, str]:
        """(tag, reference, digest) of the image a build of this run would push."""
        repository = f"{self.p.settings.registry.rstrip('/')}/{self.p.model.name}"
        digest = "sha256:" + hashlib.sha256(run_id.encode()).hexdigest()
        return f"{repository}:{run_id}", f"{repository}@{digest}", digest

    def _fetch_data(self) -> Probe:
        scheduled = self.p.slot()
        run_id = ledger.run_id(self.p.model.name, scheduled)
        self._fetched = run_id
        self.opened.append(run_id)
        return self._event(
            "fetch_data",
            events.RUN_REQUESTED,
            run_id,
            {"model": self.p.model.name, "scheduled_time": format_time(scheduled), "trigger": "manual"},
        )

    def _submit_training(self) -> Probe:
        dataset = self._run(self._fetched)["dataset"]
        run_id = self._open()
        self._submitted = run_id
        return self._event(
            "submit_training", events.DATA_FETCHED, run_id, {"model": self.p.model.name, "dataset": dataset}
        )

    def _watch_training(self) -> Probe:
        self._await_jobs([self._fetched, self._submitted])
        attributes = scheduler_attributes(self.p.settings.project, "cd4ml-watch-tick", events.WATCH_TICKED)
        return self._push("watch_training", b"{}", attributes)

    def _ended(self) -> str:
        """A run that already ended: a stage serves its event (imports, ledger read) and sets nothing going."""
        run_id = self._open()
        self.p.ledger.record(run_id, status="failed", error={"stage": "bench", "message": "a cold-start probe"})
        return run_id

    def _clear_delivery(self) -> Probe:
        artifact = {"uri": f"gs://{self.p.settings.artifact_bucket}/runs/x/model/model.joblib", "sha256": "0" * 64}
        data = {"model": self.p.model.name, "model_artifact": artifact, "metrics": {"accuracy": 1.0}, "gate": {}}
        return self._event("clear_delivery", events.EVALUATION_PASSED, self._ended(), data)

    def _decide_approval(self) -> Probe:
        """A reject, with an ID token from the stack's issuer, of a run waiting for its approver (the caller): the
        endpoint verifies the token (fetching the issuer's certificates) and ends the run rejected."""
        from cd4ml_cli import approvals

        run_id = self._open()
        me = f"user:{approvals.local_email()}"
        waiting = {"approvers": [me], "requested_at": format_time(now()), "expires_at": "2099-01-01T00:00:00.000Z"}
        self.p.ledger.record(run_id, status="awaiting_approval", fields={"approval": waiting})
        url = self.p.env["CD4ML_DECISION_URL"]
        with_issuer = {approvals.LOCAL_TOKEN_ISSUER: self.p.env[approvals.LOCAL_TOKEN_ISSUER]}
        token = approvals.id_token(url, with_issuer)
        body = {"run_id": run_id, "decision": "reject", "reason": "a cold-start probe"}
        return Probe("decide_approval", "/", body, run_id, {"Authorization": f"Bearer {token}"})

    def _watch_approvals(self) -> Probe:
        attributes = scheduler_attributes(self.p.settings.project, "cd4ml-watch-tick", events.WATCH_TICKED)
        return self._push("watch_approvals", b"{}", attributes)

    def _tick(self, stage: str) -> Callable[[], Probe]:
        """A scheduler tick (the watch stages): each reads what it watches in the ledger and acts on what is due."""

        def probe() -> Probe:
            attributes = scheduler_attributes(self.p.settings.project, "cd4ml-watch-tick", events.WATCH_TICKED)
            return self._push(stage, b"{}", attributes)

        return probe

    def _note_arrival(self) -> Probe:
        """Cloud Storage's notification of an upload under no model's watched prefix: read, matched, noted nowhere."""
        stamp = format_time(now())
        attributes = {
            "bucketId": self.p.settings.data_bucket,
            "objectId": f"bench/{uuid.uuid4().hex}.csv",
            "eventType": "OBJECT_FINALIZE",
            "payloadFormat": "NONE",
            "objectGeneration": "1",
            "eventTime": stamp,
        }
        return self._push("note_arrival", b"", attributes)

    def _promote(self) -> Probe:
        data = {"model": self.p.model.name, "execution_id": "bench", "application": "bench", "pipeline": "bench"}
        return self._event("promote", events.CANARY_SUCCEEDED, self._ended(), data)

    def _on_dead_letter(self) -> Probe:
        """A data.fetched that submit_training's subscription dead-lettered, for a run that already ended."""
        run_id = self._ended()
        data = {"model": self.p.model.name, "dataset": self._run(self._fetched)["dataset"]}
        body, attributes = Event.new(events.DATA_FETCHED, run_id, data, source=SOURCE).to_message()
        probe = self._push("on_dead_letter", body, attributes, run_id)
        project = self.p.settings.project
        subscription = catalog.subscription_id("on_dead_letter", catalog.dead_letter_topic("submit_training"))
        body_with = {**probe.body, "subscription": f"projects/{project}/subscriptions/{subscription}"}
        return Probe(probe.stage, probe.path, body_with, run_id)

    def _notify(self) -> Probe:
        data = {"model": self.p.model.name, "state": "JOB_STATE_FAILED", "error": "a cold-start probe"}
        return self._event("notify", events.TRAINING_FAILED, self._ended(), data)

    def _await_jobs(self, run_ids: list[str], timeout: float = 60.0) -> None:
        """Until each run's training job was submitted and finished at Vertex."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.p.records(run_ids)
            names = [(runs.get(r) or {}).get("training", {}).get("job") for r in run_ids]
            if all(names) and all(self.p.jobs.get_custom_job(name=n).state.name in FINISHED for n in names):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the training jobs of {', '.join(run_ids)} did not finish in {timeout:.0f} s")

    def _evaluate(self) -> Probe:
        trained = self._run(self._submitted)
        run_id = self._open()
        self._evaluated = run_id
        # What watch_training recorded on a real run: build_image later requires the run's own model (the record is
        # the truth), so a run opened here at evaluate holds it too.
        self.p.ledger.record(run_id, fields={"model_artifact": trained["model_artifact"]})
        return self._event(
            "evaluate",
            events.TRAINING_COMPLETED,
            run_id,
            {
                "model": self.p.model.name,
                "job": trained["training"]["job"],
                "model_artifact": trained["model_artifact"],
            },
        )

    def _build_image(self) -> Probe:
        evaluation = self._run(self._evaluated)["evaluation"]
        artifact = self._run(self._submitted)["model_artifact"]
        run_id = self._open()
        self._built = run_id
        self.p.ledger.record(run_id, fields={"model_artifact": artifact, "evaluation": evaluation})
        return self._event(
            "build_image",
            events.DELIVERY_CLEARED,
            run_id,
            {"model": self.p.model.name, "model_artifact": artifact, "metrics": evaluation["metrics"]},
        )

    def _on_build(self) -> Probe:
        from google.cloud.devtools.cloudbuild_v1.types import cloudbuild
        from local_emulator.cloudbuild import build_json

        run_id = self._open(stays_open=True)
        tag, _, digest = self._image(run_id)
        build = cloudbuild.Build(
            id=str(uuid.uuid4()),
            project_id=self.p.settings.project,
            status=cloudbuild.Build.Status.SUCCESS,
            images=[tag],
            tags=[f"{RUN_TAG}{run_id}", f"cd4ml-model-{self.p.model.name}"],
            results=cloudbuild.Results(images=[cloudbuild.BuiltImage(name=tag, digest=digest)]),
            log_url=f"file:///bench/{run_id}.log",
        )
        # What build_image recorded on a real run: on_build takes only the build the run recorded (the record is the
        # truth; a notice for any other build is refused).
        self.p.ledger.record(run_id, fields={"image.build_id": build.id, "image.tag": tag})
        return self._push("on_build", build_json(build).encode(), {"buildId": build.id, "status": "SUCCESS"}, run_id)

    def _on_push(self) -> Probe:
        from local_emulator.registry import GcrMessage

        run_id = self._open(stays_open=True)
        tag, reference, _ = self._image(run_id)
        return self._push("on_push", GcrMessage(action="INSERT", digest=reference, tag=tag).to_json(), {}, run_id)

    def _trigger_canary(self) -> Probe:
        evaluated = self._run(self._evaluated)
        trained = self._run(self._submitted)
        run_id = self._open()
        tag, reference, digest = self._image(run_id)
        self.p.ledger.record(
            run_id,
            fields={
                "image.status": "SUCCESS",
                "image.tag": tag,
                "image.reference": reference,
                "image.digest": digest,
                "evaluation": evaluated["evaluation"],
                "model_artifact": trained["model_artifact"],
            },
        )
        return self._event(
            "trigger_canary",
            events.IMAGE_PUSHED,
            run_id,
            {"model": self.p.model.name, "reference": reference, "tag": tag},
        )


def _at_rest(run: Mapping[str, Any] | None) -> bool:
    """Ended, or waiting for a tick the bench holds (its canary triggered: only watch_canary's tick moves it on)."""
    if run is None:
        return False
    return run.get("status") in TERMINAL or bool((run.get("canary") or {}).get("active"))
