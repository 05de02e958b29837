"""fetch_data: open the run for a run.requested event and snapshot the model's training data."""

from __future__ import annotations

from cd4ml import events, ledger, snapshot
from cd4ml.errors import InvalidEvent, InvalidManifest, UnknownModel
from cd4ml.events import Event, PubSubMessage
from cd4ml.gcs import GcsPath, read_text
from cd4ml.manifest import Manifest, loads, manifest_object, resolve_gcs
from cd4ml.payloads import RunRequested
from cd4ml.runtime import Context


def load_manifest(ctx: Context, model: str, run_id: str | None) -> Manifest:
    """The model's manifest from the artifact bucket; UnknownModel when there is none."""
    path = GcsPath(ctx.settings.artifact_bucket, manifest_object(model))
    text = read_text(ctx.storage, path)
    if text is None:
        raise UnknownModel(f"unknown model {model!r}", [f"no manifest at {path.uri}"], run_id=run_id)
    try:
        return loads(text, origin=path.uri)
    except InvalidManifest as error:
        raise InvalidManifest(error.summary, error.problems, run_id=run_id) from error


def fetch_data(message: PubSubMessage, ctx: Context) -> None:
    """run.requested → data.fetched."""
    event = Event.from_message(message, [events.RUN_REQUESTED])
    request = RunRequested.of(event)
    model = request.model
    provisional = event.subject or (ledger.run_id(model, request.scheduled_time) if request.scheduled_time else None)
    manifest = load_manifest(ctx, model, provisional)
    scheduled = request.scheduled_time or manifest.scheduled_time(event.time)
    run_id = ledger.run_id(model, scheduled)
    if event.subject and event.subject != run_id:
        raise InvalidEvent("run.requested names the wrong run", [
            f"ce-subject {event.subject!r} is not the run id {run_id!r} of model {model!r} at {scheduled}"
        ], run_id=event.subject)
    run, created = ctx.ledger.open_run(run_id, model=model, scheduled_time=scheduled, trigger=request.trigger,
                                       manifest=manifest.raw, event=event)
    if run["status"] in ledger.TERMINAL:
        ctx.info(f"run {run_id} already ended {run['status']}; duplicate request ignored", run_id)
        return
    ctx.info("run opened" if created else "run already open; resuming", run_id, model=model)
    source = resolve_gcs(manifest.data_source, ctx.settings.data_bucket)
    # No claim needed: the snapshot is content-addressed, so taking it twice writes the same objects.
    dataset = snapshot.take(ctx.storage, source, ctx.settings.data_bucket, model).to_dict()
    ctx.emit(run_id, events.DATA_FETCHED, {"model": model, "dataset": dataset}, {"dataset": dataset})
