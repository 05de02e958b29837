"""submit_training and watch_training: the Vertex AI CustomJob of a run, submitted once, watched on ticks.

submit_training: parse → act once (create the job) → decide (``submitted``) → conclude.
watch_training: per in-flight run, read the job (and the model it left) → decide (``finished``) → conclude.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cd4ml import cache, catalog, clients, events, identities, runtime
from cd4ml.bus import bounded
from cd4ml.errors import PermanentError
from cd4ml.events import Event, PubSubMessage, format_time, now, parse_time
from cd4ml.gcs import GcsPath, digest, list_objects
from cd4ml.manifest import REGISTRY_PLACEHOLDER, Manifest, parse, resolve_gcs
from cd4ml.outcome import Outcome
from cd4ml.payloads import Artifact, DataFetched
from cd4ml.run import Canary, Run, Training
from cd4ml.runtime import Context, active_run
from cd4ml.snapshot import Dataset

RUN_LABEL = "cd4ml_run_id"
FINISHED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
METRICS_FILE = "metrics.json"


def model_dir(ctx: Context, run_id: str) -> str:
    """Where Vertex puts AIP_MODEL_DIR for this run: ``<base_output_directory>/model/``."""
    return f"gs://{ctx.settings.artifact_bucket}/runs/{run_id}/model/"


def custom_job(ctx: Context, run_id: str, manifest: Manifest, dataset: Dataset) -> Any:
    """The CustomJob that trains ``manifest``'s model on ``dataset``, labelled with the run id."""
    from google.cloud.aiplatform_v1 import types
    from google.protobuf import duration_pb2

    t = manifest.training
    args = list(t.args) + [f"--{name}={value}" for name, value in sorted(t.hyperparameters.items())]
    env = [
        types.EnvVar(name=k, value=v)
        for k, v in {
            "CD4ML_RUN_ID": run_id,
            "CD4ML_MODEL": manifest.name,
            "CD4ML_DATASET_URI": dataset.uri,
            "CD4ML_DATASET_SHA256": dataset.sha256,
        }.items()
    ]
    pool = types.WorkerPoolSpec(machine_spec=types.MachineSpec(machine_type=t.machine_type), replica_count=1)
    if t.python_module:
        pool.python_package_spec = types.PythonPackageSpec(
            executor_image_uri=t.executor_image,
            package_uris=[resolve_gcs(u, ctx.settings.artifact_bucket) for u in t.package_uris],
            python_module=t.python_module,
            args=args,
            env=env,
        )
    else:
        pool.container_spec = types.ContainerSpec(
            image_uri=t.container_image, command=list(t.container_command), args=args, env=env
        )
    spec = types.CustomJobSpec(
        worker_pool_specs=[pool],
        base_output_directory=types.GcsDestination(output_uri_prefix=model_dir(ctx, run_id).removesuffix("model/")),
        scheduling=types.Scheduling(timeout=duration_pb2.Duration(seconds=t.timeout_seconds)),
    )
    if ctx.settings.training_service_account:  # the model's own training account: its datasets and runs only
        spec.service_account = identities.service_account(ctx.settings.training_service_account, "train", manifest.name)
    return types.CustomJob(
        display_name=f"cd4ml-{run_id}", job_spec=spec, labels={RUN_LABEL: run_id, "cd4ml_model": manifest.name}
    )


def submitted(run_id: str, model_dir_uri: str, dataset: Dataset, result: dict[str, Any], model: str) -> Outcome:
    """The job was created (training.submitted, the job in flight), Vertex refused it (training.failed), or an
    earlier run's training with the same key is reused (training.completed with ``reused_from``, no job)."""
    why = {
        k: v
        for k, v in {
            "key": result.get("key", ""),
            "decision": result.get("decision", ""),
            "reused_from": result.get("reused_from", ""),
            "reason": result.get("why", ""),
        }.items()
        if v
    }
    if result.get("reused_from"):
        artifact = dict(result["model_artifact"])
        return Outcome.event(
            events.TRAINING_COMPLETED,
            {
                "model": model,
                "job": result["job"],
                "model_artifact": artifact,
                "reused_from": result["reused_from"],
                "cache_key": result["key"],
            },
            {
                "training.job": result["job"],
                "training.state": "REUSED",
                "training.active": False,
                "model_artifact": artifact,
                "cache.training": why,
            },
        )
    if result["refused"]:
        return Outcome.event(
            events.TRAINING_FAILED,
            {"model": model, "state": "NOT_SUBMITTED", "error": result["refused"]},
            {"training": {"job": "", "state": "NOT_SUBMITTED", "active": False, "error": result["refused"]}},
            error=result["refused"],
        )
    return Outcome.event(
        events.TRAINING_SUBMITTED,
        {
            "model": model,
            "job": result["job"],
            "dataset_sha256": dataset.sha256,
            "model_dir": model_dir_uri,
        },
        {
            "training.job": result["job"],
            "training.state": "JOB_STATE_QUEUED",
            "training.active": True,
            "training.submitted_at": format_time(now()),
            **({"cache.training": why} if why.get("reason") else {}),
        },
    )


def finished(run: Run, state: str, artifact: Artifact | None, problem: str) -> Outcome:
    """A job's state on a tick: progress (recorded, not announced), training.completed or training.failed.

    ``artifact`` is the model the trainer left (None with ``problem`` saying why there is no usable one).
    """
    training = run.training or Training()
    if state not in FINISHED:
        return Outcome.nothing(
            f"training job {training.job} {state}", {"training.state": state} if state != training.state else None
        )
    if state == "JOB_STATE_SUCCEEDED" and artifact is not None:
        return Outcome.event(
            events.TRAINING_COMPLETED,
            {"model": run.model, "job": training.job, "model_artifact": artifact.to_dict()},
            {"training.state": state, "training.active": False, "model_artifact": artifact.to_dict()},
        )
    error = problem or f"job ended {state}"
    return Outcome.event(
        events.TRAINING_FAILED,
        {"model": run.model, "job": training.job, "state": state, "error": error},
        {"training.state": state, "training.active": False, "training.error": error},
        error=f"training job {training.job} ended {state}: {error}",
    )


def submit_training(message: PubSubMessage, ctx: Context) -> None:
    """data.fetched → training.submitted (or training.failed when Vertex refuses the job)."""
    from google.api_core import exceptions

    event = Event.from_message(message, [events.DATA_FETCHED])
    run = active_run(ctx, event)
    if run is None:
        return
    run_id = event.subject
    manifest = parse(run.manifest)
    dataset = DataFetched.of(event).dataset
    on = cache.enabled(run.cache)

    def create() -> dict[str, Any]:
        # The cache is read inside the claim: a redelivery finds this decision recorded and makes no second job.
        # The key is recorded with the cache off too: that training still feeds the cache (--no-cache only never reads it).
        try:
            job_manifest = with_trainer_image(ctx, manifest)
        except PermanentError as missing:
            return {"job": "", "refused": missing.message}
        key = training_key(ctx, job_manifest, dataset)
        entry = ctx.ledger.cached(f"{cache.TRAINING}-{key}") if key and on else None
        reused_from, why = cache.reused(key, entry, on)
        decided = {"key": key, "why": why, "decision": "reused" if reused_from else ("trained" if on else "off")}
        if reused_from and entry:
            twin = {"job": entry["job"], "model_artifact": entry["model_artifact"], "reused_from": reused_from}
            return {"refused": "", **decided, **twin}
        try:
            job = ctx.jobs.create_custom_job(
                parent=ctx.settings.location,
                custom_job=custom_job(ctx, run_id, job_manifest, dataset),
                timeout=clients.CALL_SECONDS,
            )
        except (
            exceptions.InvalidArgument,
            exceptions.FailedPrecondition,
            exceptions.PermissionDenied,
            exceptions.NotFound,
        ) as refused:
            return {"job": "", "refused": f"Vertex AI refused the job: {refused.message}", **decided}
        return {"job": job.name, "refused": "", **decided}

    def find() -> dict[str, Any] | None:
        found = list(
            ctx.jobs.list_custom_jobs(
                request={"parent": ctx.settings.location, "filter": f'labels.{RUN_LABEL}="{run_id}"'},
                **clients.bounded_call(),
            )
        )
        return {"job": found[0].name, "refused": ""} if found else None

    result, _ = ctx.once(run_id, create, recover=find)
    ctx.conclude(run_id, submitted(run_id, model_dir(ctx, run_id), dataset, result, manifest.name))


def watch_training(message: PubSubMessage, ctx: Context) -> None:
    """On a tick, report every in-flight job that finished; one job's trouble does not stop the others."""
    Event.from_message(message, [events.WATCH_TICKED])
    ctx.flush_outbox()  # events recorded by an instance that died before publishing them

    def check(run: Run) -> None:
        _check(ctx, run)
        if (run.training or Training()).unreadable_since:
            ctx.ledger.note(run.run_id, {"training.unreadable_since": ""})

    runtime.sweep(
        ctx,
        [("training.active", "==", True)],
        check,
        doing="read training job",
        trouble=lambda run, problem: unreadable(ctx, run, problem),
        ended_too=True,  # a job in flight is followed until it stops, whatever the run's status
    )
    end_stale_runs(ctx)
    from cd4ml.stages.dead_letters import end_dead_lettered_runs

    end_dead_lettered_runs(ctx)


def unreadable(ctx: Context, run: Run, trouble: Exception) -> None:
    """A job whose state cannot be read (Vertex unreachable) ends its run failed once that lasted
    ``run.stale_after_seconds``: Vertex's own timeout bounds a job only while Vertex answers, and the stale sweep
    leaves runs with a job in flight alone. (Found by the chaos session: a run whose job was created just before a
    long Vertex outage was watched forever.)"""
    training = run.training or Training()
    moment = now()
    if not training.unreadable_since:
        ctx.ledger.note(run.run_id, {"training.unreadable_since": format_time(moment)})
        return
    limit = catalog.load().stale_after_seconds
    if (moment - parse_time(training.unreadable_since)).total_seconds() < limit:
        return
    message = bounded(f"could not read training job {training.job} for {limit} s: {trouble}", 1024)
    ctx.log.error(message, extra={"stage": ctx.settings.stage, "run_id": run.run_id})
    ctx.conclude(run.run_id, Outcome.run_failed(run.model, ctx.settings.stage, "unreadable", message))
    ctx.ledger.note(run.run_id, {"training.active": False})


def stale_reason(run: Run, limit_seconds: int) -> str:
    """Why a run that made no progress for ``limit_seconds`` is ended, naming the last event it saw."""
    seen = sorted(run.events, key=lambda e: str(e.get("time", "")))
    last = f"{seen[-1]['type']} at {seen[-1]['time']}" if seen else "its request"
    return f"no progress for {limit_seconds} s after {last}: ended by watch_training"


def end_stale_runs(ctx: Context) -> None:
    """End, as failed, the running runs that made no progress for ``run.stale_after_seconds``."""
    limit = catalog.load().stale_after_seconds
    before = format_time(now() - timedelta(seconds=limit))

    def end(run: Run) -> None:
        if (run.training or Training()).active or (run.canary or Canary()).active:
            return  # a job or a canary in flight ends on its own (its timeout, its deadline)
        message = stale_reason(run, limit)
        ctx.log.error(message, extra={"stage": ctx.settings.stage, "run_id": run.run_id})
        ctx.conclude(run.run_id, Outcome.run_failed(run.model, ctx.settings.stage, "stale", message))

    runtime.sweep(ctx, [("status", "==", "running"), ("updated_at", "<", before)], end, doing="end the stale run")


def _check(ctx: Context, run: Run) -> None:
    job = ctx.jobs.get_custom_job(name=(run.training or Training()).job, **clients.bounded_call())
    state = job.state.name
    artifact, problem = None, ""
    if state == "JOB_STATE_SUCCEEDED":
        try:
            artifact = model_artifact(ctx, run.run_id)
        except PermanentError as missing:
            problem = missing.message
    elif state in FINISHED:
        problem = job.error.message
    outcome = finished(run, state, artifact, problem)
    key = str((run.cache.get("training") or {}).get("key", ""))
    if outcome.type == events.TRAINING_COMPLETED and key and artifact is not None:
        # Indexed before training.completed is published: the next run with this key finds it.
        ctx.ledger.remember(
            f"{cache.TRAINING}-{key}", {"run_id": run.run_id, "job": job.name, "model_artifact": artifact.to_dict()}
        )
    if outcome.emit is None and outcome.record:
        ctx.ledger.record(run.run_id, fields=outcome.record)  # the state, read by the next tick's comparison
        return
    if outcome.emit is not None:
        ctx.conclude(run.run_id, outcome)


def with_trainer_image(ctx: Context, manifest: Manifest) -> Manifest:
    """The manifest with its trainer image as the job runs it: ``{registry}`` is the model's own repository, and a tag
    there is pinned to the digest it points at now, so the training cache key follows the image's content and the
    job runs exactly the image looked at. PermanentError when that tag does not exist (nothing was pushed)."""
    from dataclasses import replace

    image = manifest.training.container_image
    if not image.startswith(REGISTRY_PLACEHOLDER + "/"):
        return manifest  # another registry's image: run and keyed as written (pin it by digest)
    if not ctx.settings.registry:
        raise PermanentError(f"training.container.image_uri {image!r} needs CD4ML_REGISTRY, which is not set")
    reference = identities.model_registry(ctx.settings.registry, manifest.name) + image.removeprefix(
        REGISTRY_PLACEHOLDER
    )
    if "@" not in reference:
        from cd4ml import registry

        repo = registry.Repository.of(reference, ctx.settings.registry_api)
        last = reference.rsplit("/", 1)[-1]
        tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
        found = registry.RegistryClient(token=registry.adc_token).digest(repo, tag)
        if found is None:
            raise PermanentError(
                f"the trainer image {reference} does not exist: `cd4ml model push FOLDER` builds and pushes it "
                "(training.container.dockerfile)"
            )
        reference = f"{repo.host}/{repo.path}@{found}"
    return replace(manifest, training=replace(manifest.training, container_image=reference))


def training_key(ctx: Context, manifest: Manifest, dataset: Dataset) -> str:
    """The run's training cache key ("" when a package's content hash cannot be read: then it trains)."""
    uris = [resolve_gcs(u, ctx.settings.artifact_bucket) for u in manifest.training.package_uris]
    hashes = cache.package_hashes(ctx, uris)
    if hashes is None:
        return ""
    return cache.training_key(manifest.name, dataset.sha256, hashes, cache.training_spec(manifest))


def model_artifact(ctx: Context, run_id: str) -> Artifact:
    """The model file the trainer left in AIP_MODEL_DIR (``model.*``), with its streamed sha256."""
    prefix = GcsPath.parse(model_dir(ctx, run_id))
    path = GcsPath(prefix.bucket, the_model(prefix, [b.name for b in list_objects(ctx.storage, prefix)]))
    return Artifact(uri=path.uri, sha256=digest(ctx.storage, path).sha256)


def the_model(prefix: GcsPath, names: list[str]) -> str:
    """The one ``model.*`` object under ``prefix``; PermanentError naming what was found otherwise."""
    models = [n for n in names if n[len(prefix.name) :].startswith("model.")]
    if len(models) != 1:
        raise PermanentError(
            f"the trainer must leave exactly one model.* file in {prefix.uri}",
            [f"found {', '.join(n[len(prefix.name) :] for n in names) or 'nothing'}"],
        )
    return models[0]
