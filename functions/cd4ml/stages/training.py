"""submit_training and watch_training: the Vertex AI CustomJob of a run, submitted once, watched on ticks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from cd4ml import catalog, events
from cd4ml.errors import PermanentError, RetryableError
from cd4ml.events import Event, PubSubMessage, format_time, now
from cd4ml.gcs import GcsPath, digest, list_objects
from cd4ml.manifest import Manifest, parse, resolve_gcs
from cd4ml.payloads import Artifact, DataFetched
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
    env = [types.EnvVar(name=k, value=v) for k, v in {
        "CD4ML_RUN_ID": run_id, "CD4ML_MODEL": manifest.name,
        "CD4ML_DATASET_URI": dataset.uri, "CD4ML_DATASET_SHA256": dataset.sha256,
    }.items()]
    pool = types.WorkerPoolSpec(machine_spec=types.MachineSpec(machine_type=t.machine_type), replica_count=1)
    if t.python_module:
        pool.python_package_spec = types.PythonPackageSpec(
            executor_image_uri=t.executor_image,
            package_uris=[resolve_gcs(u, ctx.settings.artifact_bucket) for u in t.package_uris],
            python_module=t.python_module, args=args, env=env)
    else:
        pool.container_spec = types.ContainerSpec(image_uri=t.container_image, command=list(t.container_command),
                                                  args=args, env=env)
    spec = types.CustomJobSpec(
        worker_pool_specs=[pool],
        base_output_directory=types.GcsDestination(output_uri_prefix=model_dir(ctx, run_id).removesuffix("model/")),
        scheduling=types.Scheduling(timeout=duration_pb2.Duration(seconds=t.timeout_seconds)),
    )
    if ctx.settings.training_service_account:
        spec.service_account = ctx.settings.training_service_account
    return types.CustomJob(display_name=f"cd4ml-{run_id}", job_spec=spec,
                           labels={RUN_LABEL: run_id, "cd4ml_model": manifest.name})


def submit_training(message: PubSubMessage, ctx: Context) -> None:
    """data.fetched → training.submitted (or training.failed when Vertex refuses the job)."""
    from google.api_core import exceptions

    event = Event.from_message(message, [events.DATA_FETCHED])
    run = active_run(ctx, event)
    if run is None:
        return
    run_id = event.subject
    manifest = parse(run["manifest"])
    dataset = DataFetched.of(event).dataset

    def create() -> dict[str, Any]:
        try:
            job = ctx.jobs.create_custom_job(parent=ctx.settings.location,
                                             custom_job=custom_job(ctx, run_id, manifest, dataset))
        except (exceptions.InvalidArgument, exceptions.FailedPrecondition, exceptions.PermissionDenied,
                exceptions.NotFound) as refused:
            return {"job": "", "refused": f"Vertex AI refused the job: {refused.message}"}
        return {"job": job.name, "refused": ""}

    def find() -> dict[str, Any] | None:
        found = list(ctx.jobs.list_custom_jobs(request={
            "parent": ctx.settings.location, "filter": f'labels.{RUN_LABEL}="{run_id}"'}))
        return {"job": found[0].name, "refused": ""} if found else None

    result, _ = ctx.ledger.once(run_id, "training-job", create, recover=find)
    if result["refused"]:
        ctx.emit(run_id, events.TRAINING_FAILED,
                 {"model": manifest.name, "state": "NOT_SUBMITTED", "error": result["refused"]},
                 {"training": {"job": "", "state": "NOT_SUBMITTED", "active": False, "error": result["refused"]}},
                 error={"stage": ctx.settings.stage, "message": result["refused"]})
        return
    ctx.emit(run_id, events.TRAINING_SUBMITTED, {
        "model": manifest.name, "job": result["job"], "dataset_sha256": dataset.sha256,
        "model_dir": model_dir(ctx, run_id),
    }, {"training.job": result["job"], "training.state": "JOB_STATE_QUEUED", "training.active": True,
        "training.submitted_at": format_time(now())})


def watch_training(message: PubSubMessage, ctx: Context) -> None:
    """On a tick, report every in-flight job that finished; one job's trouble does not stop the others."""
    from google.api_core.exceptions import GoogleAPICallError

    Event.from_message(message, [events.WATCH_TICKED])
    for run in ctx.ledger.in_flight_training():
        try:
            _check(ctx, run)
        except (RetryableError, GoogleAPICallError) as trouble:
            ctx.log.warning(f"could not read training job; next tick retries: {trouble}",
                            extra={"stage": ctx.settings.stage, "run_id": run.get("run_id")})
    end_stale_runs(ctx)


def end_stale_runs(ctx: Context) -> None:
    """End, as failed, the running runs that made no progress for ``run.stale_after_seconds``."""
    limit = catalog.load().stale_after_seconds
    for run in ctx.ledger.stale(now() - timedelta(seconds=limit)):
        seen = sorted(run.get("events") or [], key=lambda e: e["time"])
        last = f"{seen[-1]['type']} at {seen[-1]['time']}" if seen else "its request"
        message = f"no progress for {limit} s after {last}: ended by watch_training"
        ctx.ledger.record(run["run_id"], status="failed", error={"stage": ctx.settings.stage, "message": message})
        ctx.log.error(message, extra={"stage": ctx.settings.stage, "run_id": run["run_id"]})


def _check(ctx: Context, run: dict[str, Any]) -> None:
    run_id, job_name, model = run["run_id"], run["training"]["job"], run["model"]
    job = ctx.jobs.get_custom_job(name=job_name)
    state = job.state.name
    if state not in FINISHED:
        if state != run["training"].get("state"):
            ctx.ledger.record(run_id, fields={"training.state": state})
        return
    if state == "JOB_STATE_SUCCEEDED":
        try:
            artifact = model_artifact(ctx, run_id)
        except PermanentError as missing:
            _failed(ctx, run_id, model, job_name, state, missing.message)
            return
        ctx.emit(run_id, events.TRAINING_COMPLETED,
                 {"model": model, "job": job_name, "model_artifact": artifact.to_dict()},
                 {"training.state": state, "training.active": False, "model_artifact": artifact.to_dict()})
        return
    error = job.error.message or f"job ended {state}"
    _failed(ctx, run_id, model, job_name, state, error)


def _failed(ctx: Context, run_id: str, model: str, job: str, state: str, error: str) -> None:
    ctx.emit(run_id, events.TRAINING_FAILED, {"model": model, "job": job, "state": state, "error": error},
             {"training.state": state, "training.active": False, "training.error": error},
             error={"stage": ctx.settings.stage, "message": f"training job {job} ended {state}: {error}"})


def model_artifact(ctx: Context, run_id: str) -> Artifact:
    """The model file the trainer left in AIP_MODEL_DIR (``model.*``), with its streamed sha256."""
    prefix = GcsPath.parse(model_dir(ctx, run_id))
    names = [b.name for b in list_objects(ctx.storage, prefix)]
    models = [n for n in names if n[len(prefix.name):].startswith("model.")]
    if len(models) != 1:
        raise PermanentError(f"the trainer must leave exactly one model.* file in {prefix.uri}",
                             [f"found {', '.join(n[len(prefix.name):] for n in names) or 'nothing'}"])
    path = GcsPath(prefix.bucket, models[0])
    return Artifact(uri=path.uri, sha256=digest(ctx.storage, path).sha256)
