"""Delivery: build the serving image (Cloud Build), follow the build and the registry push, start the canary.

evaluation.passed → build_image → (Cloud Build) → cloud-builds → on_build → image.built
registry push → gcr → on_push → image.pushed → trigger_canary → Spinnaker webhook → canary.triggered
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from typing import Any

from cd4ml import events
from cd4ml.errors import PermanentError
from cd4ml.events import Event, PubSubMessage
from cd4ml.gcs import GcsPath, list_objects
from cd4ml.ledger import TERMINAL
from cd4ml.manifest import Manifest, parse
from cd4ml.payloads import Artifact, EvaluationPassed, ImagePushed
from cd4ml.runtime import Context, active_run

RUN_TAG = "cd4ml-run-"
DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
BUILD_FAILED = {"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}


def image_name(ctx: Context, manifest: Manifest, run_id: str) -> str:
    """``REGISTRY/MODEL:RUN_ID``."""
    return f"{ctx.settings.registry.rstrip('/')}/{manifest.name}:{run_id}"


# --- build_image -------------------------------------------------------------------------------------------


def build_context(ctx: Context, manifest: Manifest, artifact: Artifact, run_id: str) -> GcsPath:
    """Upload ``context.tar.gz``: the model's serving folder plus ``model/<model file>``, streamed via /tmp."""
    bucket = ctx.storage.bucket(ctx.settings.artifact_bucket)
    serving = GcsPath(ctx.settings.artifact_bucket, f"serving/{manifest.name}/")
    files = list_objects(ctx.storage, serving)
    dockerfile = os.path.basename(manifest.dockerfile)
    if not any(b.name == serving.name + dockerfile for b in files):
        raise PermanentError(f"no {dockerfile} at {serving.uri}: push the model again (`cd4ml model push`)")
    model = GcsPath.parse(artifact.uri)
    target = GcsPath(ctx.settings.artifact_bucket, f"builds/{run_id}/context.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "context.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            for blob in files:
                _add(tar, blob, blob.name[len(serving.name):], tmp)
            found = _add(tar, ctx.storage.bucket(model.bucket).blob(model.name),
                         f"model/{os.path.basename(model.name)}", tmp)
            if found != artifact.sha256:
                # The trainer identity can write under runs/: only the hash recorded at watch time is trusted.
                raise ModelChanged(f"the model at {artifact.uri} has sha256 {found}, not the {artifact.sha256} "
                                   "that watch_training recorded and evaluate passed; it was not built")
        bucket.blob(target.name).upload_from_filename(archive, content_type="application/gzip")
    return target


class ModelChanged(PermanentError):
    """The model object no longer has the sha256 that was evaluated."""


def _add(tar: tarfile.TarFile, blob: Any, arcname: str, tmp: str) -> str:
    """Add ``blob`` to ``tar`` as ``arcname``; returns the sha256 of the bytes added."""
    local = os.path.join(tmp, "part")
    blob.download_to_filename(local)
    hasher = hashlib.sha256()
    with open(local, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            hasher.update(chunk)
    tar.add(local, arcname=arcname)
    os.unlink(local)
    return hasher.hexdigest()


def build_request(ctx: Context, manifest: Manifest, run_id: str, source: GcsPath, model_sha256: str) -> Any:
    """The Cloud Build build: docker build with the manifest's base image, labelled, pushed as REGISTRY/MODEL:RUN."""
    from google.cloud.devtools import cloudbuild_v1 as cb

    image = image_name(ctx, manifest, run_id)
    args = ["build", "-t", image, "-f", os.path.basename(manifest.dockerfile),
            "--build-arg", f"BASE_IMAGE={manifest.base_image}",
            "--label", f"cd4ml.run_id={run_id}", "--label", f"cd4ml.model_sha256={model_sha256}", "."]
    build = cb.Build(
        source=cb.Source(storage_source=cb.StorageSource(bucket=source.bucket, object_=source.name)),
        steps=[cb.BuildStep(name=DOCKER_BUILDER, args=args)],
        images=[image],
        tags=[f"{RUN_TAG}{run_id}", f"cd4ml-model-{manifest.name}"],
        # No substitutions: Cloud Build's default MUST_MATCH refuses any that no step uses (cloudbuild.proto,
        # BuildOptions.SubstitutionOption); the run id and model hash are already literal labels above.
    )
    if ctx.settings.build_service_account:
        build.service_account = (f"projects/{ctx.settings.project}/serviceAccounts/"
                                 f"{ctx.settings.build_service_account}")
        build.options = cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)
    return build


def build_image(message: PubSubMessage, ctx: Context) -> None:
    """evaluation.passed → a Cloud Build build (its id recorded), submitted once per run."""
    event = Event.from_message(message, [events.EVALUATION_PASSED])
    run = active_run(ctx, event)
    if run is None:
        return
    run_id = event.subject
    manifest = parse(run["manifest"])
    artifact = EvaluationPassed.of(event).model_artifact

    def submit() -> dict[str, Any]:
        try:
            source = build_context(ctx, manifest, artifact, run_id)
        except ModelChanged as changed:
            return {"build_id": "", "context": "", "refused": changed.message}
        operation = ctx.builds.create_build(project_id=ctx.settings.project,
                                            build=build_request(ctx, manifest, run_id, source, artifact.sha256))
        return {"build_id": operation.metadata.build.id, "context": source.uri}

    def find() -> dict[str, Any] | None:
        found = list(ctx.builds.list_builds(project_id=ctx.settings.project, filter=f'tags="{RUN_TAG}{run_id}"'))
        return {"build_id": found[0].id, "context": ""} if found else None

    result, acted = ctx.ledger.once(run_id, "image-build", submit, recover=find)
    if result.get("refused"):
        ctx.emit(run_id, events.IMAGE_FAILED,
                 {"model": manifest.name, "status": "MODEL_CHANGED", "error": result["refused"]},
                 {"image.status": "MODEL_CHANGED", "image.error": result["refused"]},
                 error={"stage": ctx.settings.stage, "message": result["refused"]})
        return
    ctx.ledger.note(run_id, {"image.build_id": result["build_id"], "image.tag": image_name(ctx, manifest, run_id),
                             "image.context": result["context"]})
    ctx.info("build submitted" if acted else "build already submitted", run_id, build_id=result["build_id"])


# --- on_build ----------------------------------------------------------------------------------------------


def on_build(message: PubSubMessage, ctx: Context) -> None:
    """Cloud Build's status message → image.built (SUCCESS), image.failed (a failed end), or recorded progress."""
    status, build_id = message.attributes.get("status", ""), message.attributes.get("buildId", "")
    try:
        build = json.loads(message.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as bad:
        raise PermanentError("cloud-builds message data is not the Build as JSON", [str(bad)]) from bad
    if not status or not build_id or not isinstance(build, dict):
        raise PermanentError("not a Cloud Build notification", ["needs attributes buildId and status, data a Build"])
    run_id = next((t.removeprefix(RUN_TAG) for t in build.get("tags", []) if t.startswith(RUN_TAG)), None)
    if run_id is None:
        ctx.info(f"build {build_id} is not a cd4ml build (no {RUN_TAG} tag); ignored")
        return
    run = ctx.ledger.get(run_id)
    if run is None:
        raise PermanentError(f"build {build_id} names run {run_id!r}, which the ledger does not know", run_id=None)
    if run["status"] in TERMINAL or (run.get("image") or {}).get("status") in BUILD_FAILED | {"SUCCESS"}:
        ctx.info(f"build {build_id} {status} after the run's build already ended; ignored", run_id)
        return
    model = run["model"]
    log_url = build.get("logUrl", "")
    if status == "SUCCESS":
        image = (build.get("images") or [""])[0]
        results = (build.get("results") or {}).get("images") or []
        digest = next((r.get("digest", "") for r in results if r.get("name") == image), "")
        if not digest:
            raise PermanentError(f"build {build_id} succeeded but results.images has no digest for {image}", run_id=run_id)
        ctx.emit(run_id, events.IMAGE_BUILT, {"model": model, "build_id": build_id, "image": image, "digest": digest},
                 {"image.status": status, "image.digest": digest, "image.log_url": log_url})
        _release_pushed(ctx, run_id)
    elif status in BUILD_FAILED:
        detail = (build.get("failureInfo") or {}).get("detail") or build.get("statusDetail") or f"build ended {status}"
        error = f"Cloud Build {build_id} ended {status}: {detail} (log: {log_url or 'none'})"
        ctx.emit(run_id, events.IMAGE_FAILED,
                 {"model": model, "build_id": build_id, "status": status, "error": error, "log_url": log_url},
                 {"image.status": status, "image.error": error, "image.log_url": log_url},
                 error={"stage": ctx.settings.stage, "message": error})
    else:
        # Progress lives apart from image.status: a late QUEUED must never overwrite a recorded SUCCESS.
        ctx.ledger.note(run_id, {f"image.progress.{status}": build.get("startTime") or build.get("createTime", ""),
                                 "image.log_url": log_url})
        ctx.info(f"build {build_id} {status}", run_id)


def _release_pushed(ctx: Context, run_id: str) -> None:
    """The push was noticed before the build ended: publish image.pushed again now that the build is done.

    The canary starts only once both are true; whichever of on_build and on_push records its half second
    sees the other's, so the image.pushed event (same id, a duplicate trigger_canary guards against) is
    delivered at least once after the build succeeded.
    """
    run = ctx.ledger.get(run_id) or {}
    image = run.get("image") or {}
    if image.get("reference"):
        ctx.bus.publish(Event.new(events.IMAGE_PUSHED, run_id, {"model": run["model"], "reference": image["reference"],
                                                                "tag": image.get("tag", "")}, source=ctx.source))


# --- on_push -----------------------------------------------------------------------------------------------


def on_push(message: PubSubMessage, ctx: Context) -> None:
    """A registry INSERT of REGISTRY/MODEL:RUN_ID → image.pushed with the ``…@sha256:…`` reference."""
    try:
        note = json.loads(message.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as bad:
        raise PermanentError("gcr message data is not JSON", [str(bad)]) from bad
    if not isinstance(note, dict):
        raise PermanentError("gcr message data is not a JSON object")
    action, digest_ref, tag = note.get("action"), str(note.get("digest") or ""), str(note.get("tag") or "")
    if action != "INSERT":
        ctx.info(f"registry {action or 'message without action'} {tag or digest_ref} ignored")
        return
    registry = ctx.settings.registry.rstrip("/") + "/"
    repository, _, run_id = tag.rpartition(":")
    if not tag or not tag.startswith(registry) or "@sha256:" not in digest_ref:
        ctx.info(f"push of {tag or digest_ref} is not a cd4ml image under {registry}; ignored")
        return
    run = ctx.ledger.get(run_id)
    if run is None or repository != registry + run["model"]:
        ctx.info(f"push of {tag} matches no run; ignored")
        return
    if run["status"] in TERMINAL:
        ctx.info(f"push of {tag} after the run ended {run['status']}; ignored", run_id)
        return
    digest = digest_ref.rsplit("@", 1)[1]
    reference = f"{repository}@{digest}"
    ctx.emit(run_id, events.IMAGE_PUSHED, {"model": run["model"], "reference": reference, "tag": tag},
             {"image.reference": reference, "image.digest": digest})


# --- trigger_canary ----------------------------------------------------------------------------------------


def trigger_canary(message: PubSubMessage, ctx: Context) -> None:
    """image.pushed → Spinnaker webhook, once; then canary.triggered (execution confirmed) or canary.failed."""
    from cd4ml import secrets, spinnaker

    event = Event.from_message(message, [events.IMAGE_PUSHED])
    run = active_run(ctx, event)
    if run is None:
        return
    run_id = event.subject
    if (run.get("image") or {}).get("status") != "SUCCESS":
        ctx.info("image pushed before its build ended; the canary waits for the build to succeed", run_id)
        return
    manifest = parse(run["manifest"])
    reference = ImagePushed.of(event).reference
    gate = spinnaker.Gate(ctx.settings.gate_url)
    payload = spinnaker.webhook_payload(
        model=manifest.name, run_id=run_id, reference=reference,
        metrics=(run.get("evaluation") or {}).get("metrics") or {}, model_artifact=run.get("model_artifact") or {})

    def call() -> dict[str, Any]:
        outcome = gate.trigger(manifest.webhook_source, manifest.canary_application, payload,
                               key=secrets.read(ctx.settings.gate_key_secret))
        return outcome.to_dict()

    def recover() -> dict[str, Any] | None:
        found = gate.find_execution(manifest.canary_application, run_id)
        return found.to_dict() if found else None

    result, _ = ctx.ledger.once(run_id, "canary-webhook", call, recover=recover)
    if result.get("execution_id"):
        ctx.emit(run_id, events.CANARY_TRIGGERED, {
            "model": manifest.name, "event_id": result["event_id"], "execution_id": result["execution_id"],
            "application": manifest.canary_application, "pipeline": result.get("pipeline", "")},
            {"canary": {"event_id": result["event_id"], "execution_id": result["execution_id"],
                        "application": manifest.canary_application, "pipeline": result.get("pipeline", "")}})
        return
    ctx.emit(run_id, events.CANARY_FAILED,
             {"model": manifest.name, "reason": result["reason"], "event_id": result.get("event_id", "")},
             {"canary": {"reason": result["reason"], "event_id": result.get("event_id", ""),
                         "application": manifest.canary_application}},
             error={"stage": ctx.settings.stage, "message": result["reason"]})
