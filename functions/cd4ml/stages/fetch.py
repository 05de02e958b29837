"""fetch_data: open the run for a run.requested event and snapshot the model's training data.

parse → decide (``run_for``: which run this request is; ``decide``: data.fetched) → act (open the run, take
the content-addressed snapshot, which needs no claim) → conclude.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cd4ml import cache, events, snapshot
from cd4ml.errors import InvalidEvent, InvalidManifest, UnknownModel
from cd4ml.events import Event, PubSubMessage
from cd4ml.gcs import GcsPath, read_text
from cd4ml.manifest import Manifest, loads, manifest_object, resolve_gcs
from cd4ml.outcome import Outcome
from cd4ml.payloads import RunRequested
from cd4ml.run import RunId
from cd4ml.runtime import Context
from cd4ml.snapshot import Dataset


def load_manifest(ctx: Context, model: str, run_id: str | None) -> Manifest:
    """The model's manifest from the artifact bucket; UnknownModel when there is none."""
    path = GcsPath(ctx.settings.artifact_bucket, manifest_object(model))
    text = read_text(ctx.storage, path)
    if text is None:
        raise UnknownModel(f"unknown model {model!r}", [f"no manifest at {path.uri}"], run_id=run_id)
    try:
        manifest = loads(text, origin=path.uri)
    except InvalidManifest as error:
        raise InvalidManifest(error.summary, error.problems, run_id=run_id) from error
    if manifest.name != model:  # a manifest pushed under another model's name must not run as that model
        raise InvalidManifest(
            f"invalid {path.uri}",
            [f"name: {manifest.name!r} is not {model!r}, the model it is stored for"],
            run_id=run_id,
        )
    return manifest


#: A request may name a slot at most this far before its publication (a backfill) or after it (clock skew).
PAST_WINDOW = timedelta(days=31)
FUTURE_HOURS = 24
FUTURE_WINDOW = timedelta(hours=FUTURE_HOURS)


def run_for(event: Event, request: RunRequested, manifest: Manifest) -> RunId:
    """The run a request is for: its scheduled time, else the manifest's latest slot at or before publication."""
    scheduled: datetime = request.scheduled_time or manifest.scheduled_time(event.time)
    if not event.time - PAST_WINDOW <= scheduled <= event.time + FUTURE_WINDOW:
        raise InvalidEvent(
            "run.requested is scheduled outside the accepted window",
            [
                f"scheduled_time {scheduled:%Y-%m-%dT%H:%M:%SZ} is not within {PAST_WINDOW.days} days before and "
                f"{FUTURE_HOURS} hours after the request ({event.time:%Y-%m-%dT%H:%M:%SZ})"
            ],
        )
    run_id = RunId.of(request.model, scheduled)
    if event.subject and event.subject != str(run_id):
        raise InvalidEvent(
            "run.requested names the wrong run",
            [f"ce-subject {event.subject[:80]!r} is not the run id {run_id} of model {request.model!r} at {scheduled}"],
            run_id=str(run_id),
        )
    return run_id


def decide(request: RunRequested, dataset: Dataset, manifest: Manifest | None = None) -> Outcome:
    """The snapshot is taken: data.fetched, the dataset on the run, and whether the run uses the caches."""
    on = cache.switch(manifest.raw if manifest else {}, request.no_cache)
    return Outcome.event(
        events.DATA_FETCHED,
        {"model": request.model, "dataset": dataset.to_dict()},
        {"dataset": dataset.to_dict(), **on.to_record()},
    )


def fetch_data(message: PubSubMessage, ctx: Context) -> None:
    """run.requested → data.fetched."""
    event = Event.from_message(message, [events.RUN_REQUESTED])
    request = RunRequested.of(event)
    named = event.subject or (str(RunId.of(request.model, request.scheduled_time)) if request.scheduled_time else None)
    manifest = load_manifest(ctx, request.model, named)
    run_id = str(run_for(event, request, manifest))
    run, created = ctx.ledger.open_run(
        run_id,
        model=request.model,
        scheduled_time=RunId.parse(run_id).scheduled_time,
        trigger=request.trigger,
        manifest=manifest.raw,
        event=event,
    )
    if run["status"] != "running":
        ctx.info(f"run {run_id} already ended {run['status']}; duplicate request ignored", run_id)
        return
    ctx.info("run opened" if created else "run already open; resuming", run_id, model=request.model)
    source = resolve_gcs(manifest.data_source, ctx.settings.data_bucket)
    # No claim needed: the snapshot is content-addressed, so taking it twice writes the same objects.
    dataset = snapshot.take(ctx.storage, source, ctx.settings.data_bucket, request.model)
    ctx.conclude(run_id, decide(request, dataset, manifest))
