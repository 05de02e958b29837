"""Delivery: build the serving image (Cloud Build), follow the build and the registry push, start the canary.

delivery.cleared → build_image → (Cloud Build) → cloud-builds → on_build → image.built
registry push → gcr → on_push → image.pushed → trigger_canary → Spinnaker webhook → canary.triggered

Each handler: parse (``BuildNotice.of``, ``PushNotice.of``, ``Event.from_message``) → decide (the pure
``build_submitted``, ``build_reported``, ``pushed``, ``canary_started``) → act once → conclude.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cd4ml import cache, clients, events, identities, smoke
from cd4ml.errors import PermanentError, RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now
from cd4ml.gcs import GcsPath, list_objects
from cd4ml.manifest import Manifest, parse
from cd4ml.outcome import Outcome
from cd4ml.payloads import Artifact
from cd4ml.requirements import RecordDisagrees
from cd4ml.run import BUILD_ENDED, Run, RunId, is_run_id
from cd4ml.runtime import Context, checked_run

RUN_TAG = "cd4ml-run-"
DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
BUILD_FAILED = {"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
SMOKE_SCRIPT = "cd4ml_smoke.py"
#: The one folder of the workspace the server's container sees (mounted at /cd4ml-smoke): the checker, the golden
#: file and the result. Nothing else of the workspace (the checker later steps run, the context) is within its reach.
SMOKE_DIR = "cd4ml-smoke"
SMOKE_MOUNT = "/cd4ml-smoke"
SMOKE_GOLDEN = "golden.jsonl"
SMOKE_RESULT = f"{SMOKE_DIR}/result.json"
RUN_STEP = "cd4ml-smoke-run"
SMOKE_STEP = "cd4ml-smoke"
VERDICT_STEP = "cd4ml-smoke-verdict"
#: Where report and verdict run: a Python image cd4ml names, never the model's (a step in the model's image would
#: run the model team's code, its interpreter included, on the ``cloudbuild`` network, with the build's token).
CHECKER_IMAGE = "python:3.11-slim"
#: A build's whole time budget (Build.timeout): image build, smoke test and push.
BUILD_TIMEOUT = timedelta(minutes=20)


def image_name(ctx: Context, manifest: Manifest, run_id: str) -> str:
    """``REGISTRY/MODEL:RUN_ID`` (``{model}`` in REGISTRY: the model's own repository)."""
    return f"{identities.image_repository(ctx.settings.registry, manifest.name)}:{run_id}"


# --- build_image -------------------------------------------------------------------------------------------


def build_context(ctx: Context, manifest: Manifest, artifact: Artifact, run_id: str) -> tuple[GcsPath, int]:
    """Upload ``context.tar.gz``: the model's serving folder plus ``model/<model file>``, streamed via /tmp; returns
    where, and the generation written, which the build then fetches (an object replaced after the model's hash was
    checked is not the one built).

    With a smoke test, the checker (cd4ml/smoke.py) goes in as ``cd4ml_smoke.py`` (which report and verdict run) and,
    with a copy of the golden file, into ``cd4ml-smoke/`` (all that the server's container sees).
    """
    bucket = ctx.storage.bucket(ctx.settings.artifact_bucket)
    serving = GcsPath(ctx.settings.artifact_bucket, f"serving/{manifest.name}/")
    files = list_objects(ctx.storage, serving)
    dockerfile = os.path.basename(manifest.dockerfile)
    names = {b.name for b in files}
    golden = serving.name + manifest.smoke.in_context(manifest.dockerfile) if manifest.smoke else ""
    if serving.name + dockerfile not in names:
        raise PermanentError(f"no {dockerfile} at {serving.uri}: push the model again (`cd4ml model push`)")
    if manifest.smoke and serving.name + manifest.smoke.in_context(manifest.dockerfile) not in names:
        raise PermanentError(
            f"no {manifest.smoke.in_context(manifest.dockerfile)} (serving.smoke.requests) at "
            f"{serving.uri}: push the model again (`cd4ml model push`)"
        )
    model = GcsPath.parse(artifact.uri)
    target = GcsPath(ctx.settings.artifact_bucket, f"builds/{run_id}/context.tar.gz")
    with tempfile.TemporaryDirectory() as tmp:
        archive = os.path.join(tmp, "context.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            for blob in files:
                _add(tar, blob, blob.name[len(serving.name) :], tmp)
                if blob.name == golden:
                    _add(tar, blob, f"{SMOKE_DIR}/{SMOKE_GOLDEN}", tmp)
            if manifest.smoke:
                tar.add(smoke.SCRIPT, arcname=SMOKE_SCRIPT)
                tar.add(smoke.SCRIPT, arcname=f"{SMOKE_DIR}/{SMOKE_SCRIPT}")
            found = _add(
                tar, ctx.storage.bucket(model.bucket).blob(model.name), f"model/{os.path.basename(model.name)}", tmp
            )
            if found != artifact.sha256:
                # The trainer identity can write under runs/: only the hash recorded at watch time is trusted.
                raise ModelChanged(
                    f"the model at {artifact.uri} has sha256 {found}, not the {artifact.sha256} "
                    "that watch_training recorded and evaluate passed; it was not built"
                )
        uploaded = bucket.blob(target.name)
        uploaded.upload_from_filename(archive, content_type="application/gzip")
    return target, int(uploaded.generation or 0)


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


def build_request(
    ctx: Context, manifest: Manifest, run_id: str, source: GcsPath, model_sha256: str, generation: int = 0
) -> Any:
    """The Cloud Build build: docker build with the manifest's base image, labelled; the smoke test when the
    manifest has one; the image pushed as REGISTRY/MODEL:RUN only when every step succeeded; the context fetched at
    ``generation``; at most ``BUILD_TIMEOUT`` long."""
    from google.cloud.devtools import cloudbuild_v1 as cb

    image = image_name(ctx, manifest, run_id)
    args = [
        "build",
        "-t",
        image,
        "-f",
        os.path.basename(manifest.dockerfile),
        "--build-arg",
        f"BASE_IMAGE={manifest.base_image}",
        "--label",
        f"cd4ml.run_id={run_id}",
        "--label",
        f"cd4ml.model_sha256={model_sha256}",
        ".",
    ]
    build = cb.Build(
        source=cb.Source(
            storage_source=cb.StorageSource(bucket=source.bucket, object_=source.name, generation=generation or None)
        ),
        # Explicit: Cloud Build's default is 60 minutes (Build.timeout); a serving image and its smoke test need far
        # less, and a stuck build must end the run in a recorded state soon.
        timeout=BUILD_TIMEOUT,
        steps=[cb.BuildStep(name=DOCKER_BUILDER, args=args), *smoke_steps(manifest, image, model_sha256)],
        # Artifacts.images (cloudbuild.proto): "pushed upon the successful completion of all build steps", so an
        # image whose smoke test failed never reaches the registry (no gcr message, no canary).
        images=[image],
        tags=[f"{RUN_TAG}{run_id}", f"cd4ml-model-{manifest.name}"],
        # No substitutions: Cloud Build's default MUST_MATCH refuses any that no step uses (cloudbuild.proto,
        # BuildOptions.SubstitutionOption); the run id and model hash are already literal labels above.
    )
    if ctx.settings.build_service_account:  # the model's own build account: it may push REGISTRY/MODEL only
        account = identities.service_account(ctx.settings.build_service_account, "build", manifest.name)
        build.service_account = f"projects/{ctx.settings.project}/serviceAccounts/{account}"
        build.options = cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)
    return build


def _tolerances(test: Any) -> list[str]:
    """The manifest's numeric tolerances, only when not the defaults (builds of unchanged manifests stay the same)."""
    given = (
        ("--abs-tolerance", test.abs_tolerance, smoke.ABS_TOLERANCE),
        ("--rel-tolerance", test.rel_tolerance, smoke.REL_TOLERANCE),
    )
    return [arg for flag, value, default in given if value != default for arg in (flag, f"{value!r}")]


def smoke_steps(manifest: Manifest, image: str, model_sha256: str) -> list[Any]:
    """The smoke test's three steps: the model's server and the checker in the image just built, with no network
    and no credential; then the result reported and judged in ``CHECKER_IMAGE``.

    ``cd4ml-smoke-run`` is a docker builder step, ``docker run --network=none``: on Cloud Build every step's own
    container is on the ``cloudbuild`` network, where the metadata server hands out the build account's token
    (https://cloud.google.com/build/docs/build-config-file-schema#network), but a container a docker step starts
    is on the network its flags name, and Docker's ``none`` network is a loopback interface alone
    (https://docs.docker.com/engine/network/drivers/none/): the server and the checker talk over 127.0.0.1 and
    nothing answers anywhere else. It sees only ``/workspace/cd4ml-smoke`` (``-v``: the docker daemon's
    ``/workspace`` is the build's, cloud-builders#323), runs with the image's own working directory and user, and
    exits 0 once the result is written. ``cd4ml-smoke`` copies the result to ``$BUILDER_OUTPUT/output`` (returned in
    ``results.buildStepOutputs``), ``cd4ml-smoke-verdict`` fails the build when it did not pass. Every value is
    literal (a ``$`` escaped as ``$$``): no substitution for MUST_MATCH to refuse.
    """
    from google.cloud.devtools import cloudbuild_v1 as cb

    test = manifest.smoke
    if test is None:
        return []
    check = [
        "check",
        "--golden",
        f"{SMOKE_MOUNT}/{SMOKE_GOLDEN}",
        "--model-sha256",
        model_sha256,
        "--min-agreement",
        f"{test.min_agreement:g}",
        "--latency-ms",
        f"{test.latency_ms:g}",
        "--port",
        str(test.port),
        "--health-path",
        test.health_path,
        "--startup-seconds",
        f"{test.startup_seconds:g}",
        *_tolerances(test),
        "--result",
        f"{SMOKE_MOUNT}/result.json",
        "--",
        *test.command,
    ]
    isolated = [
        "run",
        "--rm",
        "--network=none",
        f"--volume=/workspace/{SMOKE_DIR}:{SMOKE_MOUNT}",
        "--entrypoint=python3",
        image,
        f"{SMOKE_MOUNT}/{SMOKE_SCRIPT}",
        *check,
    ]
    return [
        cb.BuildStep(name=DOCKER_BUILDER, id=RUN_STEP, args=[arg.replace("$", "$$") for arg in isolated]),
        cb.BuildStep(
            name=CHECKER_IMAGE, id=SMOKE_STEP, entrypoint="python3", args=[SMOKE_SCRIPT, "report", SMOKE_RESULT]
        ),
        cb.BuildStep(
            name=CHECKER_IMAGE, id=VERDICT_STEP, entrypoint="python3", args=[SMOKE_SCRIPT, "verdict", SMOKE_RESULT]
        ),
    ]


def build_submitted(model: str, result: dict[str, Any], tag: str) -> Outcome:
    """The build was submitted (its id recorded; Cloud Build reports the rest) or refused before it (image.failed)."""
    if result.get("refused"):
        return Outcome.event(
            events.IMAGE_FAILED,
            {"model": model, "status": "MODEL_CHANGED", "error": result["refused"]},
            {"image.status": "MODEL_CHANGED", "image.error": result["refused"]},
            error=result["refused"],
        )
    return Outcome.nothing(
        f"build {result['build_id']} submitted",
        {"image.build_id": result["build_id"], "image.tag": tag, "image.context": result["context"]},
    )


def build_image(message: PubSubMessage, ctx: Context) -> None:
    """delivery.cleared → a Cloud Build build (its id recorded), submitted once per run."""
    event = Event.from_message(message, [events.DELIVERY_CLEARED])
    run = checked_run(ctx, event)  # the evaluated model, approved where an approval was asked
    if run is None or run.model_artifact is None:
        return
    run_id = event.subject
    manifest = parse(run.manifest)
    artifact = run.model_artifact  # the record's, never the event's

    def submit() -> dict[str, Any]:
        reused = cache.check_image(ctx, run_id, manifest, artifact.sha256, run.cache)  # the build cache
        if reused is not None:
            return reused
        try:
            source, generation = build_context(ctx, manifest, artifact, run_id)
        except ModelChanged as changed:
            return {"build_id": "", "context": "", "refused": changed.message}
        operation = ctx.builds.create_build(
            project_id=ctx.settings.project,
            build=build_request(ctx, manifest, run_id, source, artifact.sha256, generation),
            timeout=clients.CALL_SECONDS,
        )
        return {"build_id": operation.metadata.build.id, "context": source.uri}

    def find() -> dict[str, Any] | None:
        found = list(
            ctx.builds.list_builds(
                project_id=ctx.settings.project, filter=f'tags="{RUN_TAG}{run_id}"', **clients.bounded_call()
            )
        )
        return {"build_id": found[0].id, "context": ""} if found else None

    result, _ = ctx.once(run_id, submit, recover=find)
    if result.get("reused_from"):
        cache.continue_with_image(ctx, run_id, manifest.name, result)
        return
    ctx.conclude(run_id, build_submitted(manifest.name, result, image_name(ctx, manifest, run_id)))


# --- on_build ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildNotice:
    """Cloud Build's status message: attributes buildId and status, data the Build resource as JSON."""

    build_id: str
    status: str
    run_id: str | None  # from the build's cd4ml-run- tag; None for builds that are not cd4ml's
    image: str
    digest: str
    log_url: str
    detail: str
    at: str
    smoke: dict[str, Any] | None = None  # the smoke step's result (results.buildStepOutputs), when it wrote one
    failed_step: str = ""  # the id of the step that failed, if it has one

    @classmethod
    def of(cls, message: PubSubMessage) -> BuildNotice:
        status, build_id = message.attributes.get("status", ""), message.attributes.get("buildId", "")
        try:
            build = json.loads(message.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as bad:
            raise PermanentError("cloud-builds message data is not the Build as JSON", [str(bad)[:200]]) from bad
        if not status or not build_id or not isinstance(build, dict):
            raise PermanentError(
                "not a Cloud Build notification", ["needs attributes buildId and status, data a Build"]
            )
        tags = [t for t in build.get("tags") or [] if isinstance(t, str)]
        run_id = next((t.removeprefix(RUN_TAG) for t in tags if t.startswith(RUN_TAG)), None)
        if run_id is not None and not is_run_id(run_id):
            raise PermanentError(f"build {build_id[:80]} has tag {RUN_TAG}{run_id[:80]}, which names no run id")
        image = str((build.get("images") or [""])[0])
        results = (build.get("results") or {}).get("images") or []
        return cls(
            build_id=build_id,
            status=status,
            run_id=run_id,
            image=image,
            digest=next((str(r.get("digest", "")) for r in results if r.get("name") == image), ""),
            log_url=str(build.get("logUrl", "")),
            detail=str((build.get("failureInfo") or {}).get("detail") or build.get("statusDetail") or ""),
            at=str(build.get("startTime") or build.get("createTime", "")),
            smoke=smoke_result(build),
            failed_step=_failed_step(build),
        )


def _steps(build: dict[str, Any]) -> list[dict[str, Any]]:
    steps = build.get("steps")
    return [s if isinstance(s, dict) else {} for s in steps] if isinstance(steps, list) else []


def _failed_step(build: dict[str, Any]) -> str:
    return next((str(s.get("id") or "") for s in _steps(build) if s.get("status") == "FAILURE"), "")


#: The smoke result's fields and their types: only these are recorded (schemas/run.schema.json, ``smoke``).
_SMOKE_FIELDS: dict[str, tuple[type, ...]] = {
    "passed": (bool,),
    "failed": (list,),
    "reason": (str,),
    "checks": (dict,),
    "failures": (list,),
    "agreement": (int, float),
    "agreed": (int,),
    "requests": (int,),
    "min_agreement": (int, float),
    "latency_p50_ms": (int, float),
    "latency_max_ms": (int, float),
    "latency_budget_ms": (int, float),
    "startup_ms": (int, float),
    "health_sha256": (str,),
    "expected_sha256": (str,),
}


def smoke_result(build: dict[str, Any]) -> dict[str, Any] | None:
    """The ``cd4ml-smoke`` step's output: ``results.buildStepOutputs[i]`` (bytes, base64 in the Build's JSON; one
    entry per step, in step order; cloudbuild.proto Results.build_step_outputs), decoded; None when absent."""
    index = next((i for i, s in enumerate(_steps(build)) if s.get("id") == SMOKE_STEP), None)
    outputs = (build.get("results") or {}).get("buildStepOutputs") or []
    if index is None or not isinstance(outputs, list) or index >= len(outputs) or not outputs[index]:
        return None
    try:
        raw = json.loads(base64.b64decode(str(outputs[index]), validate=True))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("passed"), bool):
        return None
    kept: dict[str, Any] = {}
    for key, types in _SMOKE_FIELDS.items():
        value = raw.get(key)
        if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
            kept[key] = value
    kept["failed"] = [str(c)[:40] for c in kept.get("failed", [])][:10]
    kept["failures"] = [str(f)[:400] for f in kept.get("failures", [])][:10]
    kept["checks"] = {str(k)[:40]: v for k, v in kept.get("checks", {}).items() if isinstance(v, bool)}
    kept["reason"] = str(kept.get("reason") or smoke.reason(kept))[:1000]
    return kept


def build_reported(notice: BuildNotice, run: Run) -> Outcome:
    """image.built on SUCCESS, image.failed on a failed end, progress recorded otherwise; nothing after the end."""
    if run.image.status in BUILD_FAILED | {"SUCCESS"}:
        return Outcome.nothing(f"build {notice.build_id} {notice.status} after the run's build already ended; ignored")
    tested = {"smoke": notice.smoke} if notice.smoke is not None else {}
    if notice.status == "SUCCESS":
        if not notice.digest:
            raise PermanentError(
                f"build {notice.build_id} succeeded but results.images has no digest for {notice.image}",
                run_id=run.run_id,
            )
        return Outcome.event(
            events.IMAGE_BUILT,
            {"model": run.model, "build_id": notice.build_id, "image": notice.image, "digest": notice.digest},
            {"image.status": notice.status, "image.digest": notice.digest, "image.log_url": notice.log_url, **tested},
        )
    if notice.status in BUILD_FAILED:
        detail = notice.detail or f"build ended {notice.status}"
        checks: list[str] = []
        if notice.smoke is not None and not notice.smoke["passed"]:
            checks = list(notice.smoke["failed"])
            detail = f"smoke test failed: {notice.smoke['reason']}"
        elif notice.failed_step in (RUN_STEP, SMOKE_STEP, VERDICT_STEP):
            # Cloud Build documents no buildStepOutputs for a failed build: name the step, point at the log.
            detail = f"smoke test failed in step {notice.failed_step} (no result returned; see the log): {detail}"
        error = f"Cloud Build {notice.build_id} ended {notice.status}: {detail} (log: {notice.log_url or 'none'})"
        return Outcome.event(
            events.IMAGE_FAILED,
            {
                "model": run.model,
                "build_id": notice.build_id,
                "status": notice.status,
                "error": error,
                "log_url": notice.log_url,
                **({"failed_checks": checks} if checks else {}),
            },
            {"image.status": notice.status, "image.error": error, "image.log_url": notice.log_url, **tested},
            error=error,
        )
    # Progress lives apart from image.status: a late QUEUED must never overwrite a recorded SUCCESS.
    return Outcome.nothing(
        f"build {notice.build_id} {notice.status}",
        {f"image.progress.{notice.status}": notice.at, "image.log_url": notice.log_url},
    )


def on_build(message: PubSubMessage, ctx: Context) -> None:
    """Cloud Build's status message → image.built (SUCCESS), image.failed (a failed end), or recorded progress."""
    notice = BuildNotice.of(message)
    if notice.run_id is None:
        ctx.info(f"build {notice.build_id} is not a cd4ml build (no {RUN_TAG} tag); ignored")
        return
    run = ctx.ledger.run(notice.run_id)
    if run is None:
        raise PermanentError(
            f"build {notice.build_id} names run {notice.run_id!r}, which the ledger does not know", run_id=None
        )
    if run.ended:
        ctx.info(f"build {notice.build_id} {notice.status} after the run ended {run.status}; ignored", run.run_id)
        return
    if notice.build_id != run.image.build_id:
        if not run.image.build_id and notice.status not in BUILD_FAILED | {"SUCCESS"}:
            ctx.info(f"build {notice.build_id} {notice.status} before build_image recorded it; ignored", run.run_id)
            return
        if not run.image.build_id:  # build_image records the id right after Cloud Build answers: soon
            raise RetryableError(f"build {notice.build_id} ended {notice.status} before the run recorded its build")
        raise RecordDisagrees(
            f"on_build refused build {notice.build_id} {notice.status} (nothing done, run {run.run_id} unchanged)",
            [f"the run's build is {run.image.build_id}; a build tagged {RUN_TAG}{run.run_id} is not the run's build"],
            run_id=run.run_id,
        )
    ctx.conclude(run.run_id, build_reported(notice, run))
    if notice.status == "SUCCESS":
        # The registry's notice may have come first (noted by on_push): the image is announced once both are in.
        # A redelivered SUCCESS does it again (conclude publishes what a dead delivery left in the outbox).
        announce_push(ctx, run.run_id)


def announce_push(ctx: Context, run_id: str) -> None:
    """image.pushed, once the build succeeded and the registry noticed a push of the digest Cloud Build reported."""
    run = ctx.ledger.run(run_id)
    if run is None or run.ended or run.image.status != "SUCCESS" or not run.image.digest:
        return
    seen = dict(run.image.pushes.get(push_key(run.image.digest)) or {})
    if seen:
        ctx.conclude(
            run_id, pushed(PushNotice("INSERT", str(seen["digest_ref"]), str(seen["tag"])), run, ctx.settings.registry)
        )


def push_key(digest: str) -> str:
    """The run record's key of a noticed push (``image.pushes.<key>``): a plain field name, from its digest."""
    return "d" + digest.removeprefix("sha256:")[:64]


# --- on_push -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushNotice:
    """Artifact Registry's ``gcr`` message: ``{"action": "INSERT", "digest": "HOST/REPO/IMG@sha256:…", "tag": …}``."""

    action: str
    digest_ref: str
    tag: str

    @classmethod
    def of(cls, message: PubSubMessage) -> PushNotice:
        try:
            note = json.loads(message.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as bad:
            raise PermanentError("gcr message data is not JSON", [str(bad)[:200]]) from bad
        if not isinstance(note, dict):
            raise PermanentError("gcr message data is not a JSON object")
        return cls(
            action=str(note.get("action") or ""),
            digest_ref=str(note.get("digest") or ""),
            tag=str(note.get("tag") or ""),
        )

    def run_id(self, registry: str) -> str | None:
        """The run of a push of ``REGISTRY/MODEL:RUN_ID`` by digest; None for anything else."""
        _, _, tag = self.tag.rpartition(":")
        if self.action != "INSERT" or "@sha256:" not in self.digest_ref or not is_run_id(tag):
            return None
        model = RunId.parse(tag).model
        return tag if self.tag == f"{identities.image_repository(registry, model)}:{tag}" else None


def pushed(notice: PushNotice, run: Run, registry: str) -> Outcome:
    """image.pushed with the image by digest, when the pushed repository is the run's model's."""
    repository = notice.tag.rpartition(":")[0]
    if repository != identities.image_repository(registry, run.model):
        return Outcome.nothing(f"push of {notice.tag} matches no run; ignored")
    reference = f"{repository}@{notice.digest_ref.rsplit('@', 1)[1]}"
    return Outcome.event(
        events.IMAGE_PUSHED,
        {"model": run.model, "reference": reference, "tag": notice.tag},
        {"image.reference": reference, "image.digest": reference.rsplit("@", 1)[1]},
    )


def on_push(message: PubSubMessage, ctx: Context) -> None:
    """A registry INSERT of REGISTRY/MODEL:RUN_ID → image.pushed with the ``…@sha256:…`` reference, when its digest is
    the one Cloud Build reported for the run's build; noted until the build reports, refused when it differs."""
    notice = PushNotice.of(message)
    run_id = notice.run_id(ctx.settings.registry)
    run = ctx.ledger.run(run_id) if run_id else None
    if run is None:
        ctx.info(
            f"registry {notice.action or 'message without action'} of {notice.tag or notice.digest_ref} "
            f"is not a push of a cd4ml run's image under {ctx.settings.registry}; ignored"
        )
        return
    for _ in range(3):
        if not _on_push(ctx, notice, run):
            return
        run = ctx.ledger.run(run.run_id) or run  # the build reported meanwhile: decide again on the new record
    raise RetryableError(f"run {run.run_id} changed under three attempts to note the push of {notice.tag}")


class _BuildReported(Exception):
    """The build's end was recorded between the read and the write of a push note."""


def _on_push(ctx: Context, notice: PushNotice, run: Run) -> bool:
    """Decide on one push notice; True when the record changed under the decision (decide again)."""
    if run.ended:
        ctx.info(f"push of {notice.tag} after the run ended {run.status}; ignored", run.run_id)
        return False
    digest = notice.digest_ref.rsplit("@", 1)[1]
    if run.image.status == "SUCCESS":
        if digest != run.image.digest:
            raise RecordDisagrees(
                f"on_push refused the push of {notice.tag} (nothing done, run {run.run_id} unchanged)",
                [f"its digest {digest[:19]} is not {run.image.digest[:19]}, which build {run.image.build_id} reported"],
                run_id=run.run_id,
            )
        ctx.conclude(run.run_id, pushed(notice, run, ctx.settings.registry))
        return False
    if run.image.build_ended:
        ctx.info(f"push of {notice.tag} after the run's build ended {run.image.status}; ignored", run.run_id)
        return False
    # The build has not reported yet: note the push; on_build announces it if its digest is the build's. The note
    # is written only while the build is still unreported (checked inside the write), else decided again.
    noted = {"digest_ref": notice.digest_ref, "tag": notice.tag, "at": format_time(now())}

    def unreported(record: Mapping[str, Any]) -> None:
        if str((record.get("image") or {}).get("status") or "") in BUILD_ENDED:
            raise _BuildReported

    try:
        ctx.ledger.record(run.run_id, fields={f"image.pushes.{push_key(digest)}": noted}, check=unreported)
    except _BuildReported:
        return True
    ctx.info(f"push of {notice.tag} noted; announced once the run's build reports this digest", run.run_id)
    return False


# --- trigger_canary ----------------------------------------------------------------------------------------


def canary_started(
    model: str, application: str, result: dict[str, Any], at: datetime, deadline_minutes: float
) -> Outcome:
    """canary.triggered when Gate confirmed an execution (watch_canary then follows it to its verdict, until the
    manifest's deadline), canary.failed naming why otherwise."""
    if result.get("execution_id"):
        canary = {
            "event_id": result["event_id"],
            "execution_id": result["execution_id"],
            "application": application,
            "pipeline": result.get("pipeline", ""),
        }
        following = {
            **canary,
            "active": True,
            "triggered_at": format_time(at),
            "deadline": format_time(at + timedelta(minutes=deadline_minutes)),
        }
        return Outcome.event(events.CANARY_TRIGGERED, {"model": model, **canary}, {"canary": following})
    return Outcome.event(
        events.CANARY_FAILED,
        {"model": model, "reason": result["reason"], "event_id": result.get("event_id", "")},
        {"canary": {"reason": result["reason"], "event_id": result.get("event_id", ""), "application": application}},
        error=result["reason"],
    )


def without_canary(model: str, smoke_result: Mapping[str, Any] | None) -> Outcome:
    """A manifest without a canary: the image is proven by its smoke test alone, and canary.succeeded says so."""
    tested = (
        f"its smoke test passed ({smoke_result.get('agreed')}/{smoke_result.get('requests')} golden requests agreed)"
        if smoke_result and smoke_result.get("passed")
        else "it has no smoke test either"
    )
    why = f"no canary in the manifest: promoted on the build alone; {tested}"
    return Outcome.event(
        events.CANARY_SUCCEEDED, {"model": model, "without_canary": why}, {"canary": {"without_canary": why}}
    )


def trigger_canary(message: PubSubMessage, ctx: Context) -> None:
    """image.pushed → Spinnaker webhook, once; then canary.triggered (execution confirmed) or canary.failed."""
    from cd4ml import catalog, gate_credentials, secrets, spinnaker

    event = Event.from_message(message, [events.IMAGE_PUSHED])
    run = checked_run(ctx, event)  # the image Cloud Build reported for the run's build, pushed
    if run is None:
        return
    run_id = event.subject
    manifest = parse(run.manifest)
    if manifest.name != run.model:  # the source and the key are the run's model's, whatever its manifest says
        raise PermanentError(
            f"run {run_id} is of model {run.model} but its manifest names {manifest.name}", run_id=run_id
        )
    if not manifest.canary_application:
        ctx.conclude(run_id, without_canary(manifest.name, run.smoke))
        return
    # The model's own key (a key opens only its model's pipeline), read before the claim: a missing one is permanent.
    key = secrets.read(spinnaker.key_reference(ctx.settings.gate_key_secret, run.model))
    budget = spinnaker.budget(catalog.load().stage("trigger_canary").timeout_seconds)
    gate = spinnaker.GateClient(
        ctx.settings.gate_url,
        credentials=gate_credentials.load(ctx.settings.gate_auth),
        budget_seconds=budget,
        confirm_seconds=spinnaker.confirm_window(ctx.settings.gate_confirm_seconds, budget),
    )
    payload = spinnaker.webhook_payload(
        model=run.model,
        run_id=run_id,
        reference=run.image.reference,  # the record's, never the event's
        metrics=dict(run.evaluation.metrics) if run.evaluation else {},
        model_artifact=run.model_artifact.to_dict() if run.model_artifact else {},
    )

    def call() -> dict[str, Any]:
        return gate.trigger(
            spinnaker.webhook_source(run.model), manifest.canary_application, payload, key=key
        ).to_dict()

    def recover() -> dict[str, Any] | None:
        found = gate.find_execution(manifest.canary_application, run_id)
        return found.to_dict() if found else None

    # The claim's lease is renewed while the act runs; the act (recover, webhook, confirmation) spends at most the
    # client's budget, well under the function's timeout, so the platform never stops it mid-act.
    result, _ = ctx.once(run_id, call, recover=recover)
    ctx.conclude(
        run_id,
        canary_started(manifest.name, manifest.canary_application, result, now(), manifest.canary_deadline_minutes),
    )
