"""on_dead_letter: end the run of a message Pub/Sub dead-lettered on its own, so no run waits for the stale sweep.

A stage that fails its last delivery ends the run itself (``runtime.Context.give_up``). It cannot when that last
delivery never came back: the instance crashed, ran out of memory or time, and Pub/Sub counted the attempt and
dead-lettered the message (the chaos session killed such fifth attempts). This stage reads the stages' dead-letter
topics (catalog ``triggers``) and decides:

- a message a cd4ml stage dead-lettered itself (``cd4ml-rejected-by`` or ``cd4ml-exhausted-by``) was handled
  there: a rejected message never changes its run, a given-up one already ended it;
- a message that names no run (a tick, Google's formats) or a run that ended: nothing to end;
- a message whose work was done anyway (the source stage recorded one of its outputs after the message's event:
  the attempt crashed after its record, or a duplicate of it succeeded): nothing to end;
- otherwise the run is marked (``dead_letter``: stage, event, reason, time), and the watch tick ends it ``failed``
  (``end_dead_lettered_runs``), naming the stage and the attempts, once ``GRACE_SECONDS`` passed with the work
  still not done and no delivery carrying it out (a live claim, ``Ledger.live_claims``): a duplicate of the
  message, still being retried, may yet do it (the chaos session's triple delivery did). The message stays held
  for ``cd4ml dead-letters replay``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta

from cd4ml import catalog
from cd4ml.bus import bounded
from cd4ml.events import PubSubMessage, format_time, now
from cd4ml.outcome import Outcome
from cd4ml.run import Run, is_run_id
from cd4ml.runtime import Context

#: Attributes Pub/Sub adds to a message it dead-letters (https://cloud.google.com/pubsub/docs/handling-failures).
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
HANDLED_BY = ("cd4ml-rejected-by", "cd4ml-exhausted-by")
#: How long a dead-lettered message's run may still make progress (a duplicate of the message being retried, a
#: claim's lease running out) before the watch tick ends it: longer than an effect claim's lease (ledger.LEASE).
GRACE_SECONDS = 120
#: The run record's mark (``dead_letter``): pending, stage, event_id, at, reason.
MARK = "dead_letter"


def source_stage(message: PubSubMessage) -> str:
    """The stage whose subscription dead-lettered the message: from the dead-letter topic this push came through
    (our subscription ``cd4ml-on-dead-letter-<stage>-dead-letter``), else Pub/Sub's source subscription."""
    stages = [s.name for s in catalog.load().stages]
    subscription = message.subscription.rsplit("/", 1)[-1]
    for stage in stages:
        if subscription.endswith("-" + catalog.dead_letter_topic(stage).removeprefix("cd4ml-")):
            return stage
    source = message.attributes.get(SOURCE_SUBSCRIPTION, "").rsplit("/", 1)[-1]
    for stage in sorted(stages, key=len, reverse=True):  # the longest name first: cd4ml-watch-canary-twin1
        if source == catalog.subscription_id(stage) or source.startswith(catalog.subscription_id(stage) + "-"):
            return stage
    return ""


def work_done(run: Run, event_id: str, emits: Sequence[str]) -> bool:
    """True when the run recorded one of the stage's outputs after the event ``event_id`` (or the event is not
    the run's at all: then the message is a stray copy, not the run's missing step)."""
    ids = [e.get("id") for e in run.events]
    if event_id not in ids:
        return True
    return any(e.get("type") in emits for e in run.events[ids.index(event_id) + 1 :])


def reason(message: PubSubMessage, stage: str) -> str:
    attributes: Mapping[str, str] = message.attributes
    attempts = attributes.get(DELIVERY_COUNT) or str(catalog.load().delivery.max_delivery_attempts)
    source = attributes.get(SOURCE_SUBSCRIPTION, "").rsplit("/", 1)[-1] or catalog.subscription_id(stage)
    return bounded(
        f"gave up: Pub/Sub dead-lettered {attributes.get('ce-type', 'a message')} {attributes.get('ce-id', '')} "
        f"after {attempts} delivery attempts on {source}; the last attempt never answered (the instance crashed "
        f"or timed out), so {stage} could not record an error. The message is held: `cd4ml dead-letters "
        f"--stage {stage}`, then `cd4ml dead-letters replay` once the cause is fixed",
        1024,
    )


def on_dead_letter(message: PubSubMessage, ctx: Context) -> None:
    """A dead-lettered message → its run marked for ending (``end_dead_lettered_runs``), unless the message was
    handled, names no live run, or its work was done."""
    handled = next((message.attributes[k] for k in HANDLED_BY if k in message.attributes), "")
    if handled:
        ctx.info(f"dead letter already handled by {handled}", message.attributes.get("ce-subject", ""))
        return
    run_id = message.attributes.get("ce-subject", "")
    stage = source_stage(message)
    if not is_run_id(run_id) or not stage:
        ctx.info(f"dead letter from {stage or 'an unknown subscription'} names no run; held for inspection")
        return
    run = ctx.ledger.run(run_id)
    if run is None or run.ended:
        ctx.info(f"dead letter from {stage}: run {'unknown' if run is None else run.status}; nothing to end", run_id)
        return
    emits = catalog.load().stage(stage).emits
    if work_done(run, message.attributes.get("ce-id", ""), emits):
        ctx.info(f"dead letter from {stage}: its work was done meanwhile; the run goes on", run_id)
        return
    why = reason(message, stage)
    last = dict(run.last_failure)
    if last.get("stage") == stage and last.get("error"):
        why = bounded(f"{why}. Last error seen by {stage}: {last['error']}", 1024)
    mark = {"pending": True, "stage": stage, "event_id": message.attributes.get("ce-id", ""), "at": format_time(now())}
    ctx.ledger.note(run_id, {MARK: {**mark, "reason": why}})
    ctx.info(f"dead letter from {stage}: the run ends failed in {GRACE_SECONDS} s unless it makes progress", run_id)


def end_dead_lettered_runs(ctx: Context) -> None:
    """On the watch tick: end, as failed, each marked run whose grace is over, whose work is still not done and
    which no delivery is carrying out; clear the mark of runs that ended or went on meanwhile."""
    cutoff = format_time(now() - timedelta(seconds=GRACE_SECONDS))
    for doc in ctx.ledger.marked(f"{MARK}.pending"):
        run = Run.from_document(doc)
        mark = dict(doc.get(MARK) or {})
        stage = str(mark.get("stage", ""))
        emits = catalog.load().stage(stage).emits if stage in {s.name for s in catalog.load().stages} else ()
        if run.ended or work_done(run, str(mark.get("event_id", "")), emits):
            ctx.ledger.note(run.run_id, {f"{MARK}.pending": False})
            continue
        if str(mark.get("at", "")) > cutoff or ctx.ledger.live_claims(run.run_id):
            continue
        why = str(mark.get("reason") or f"gave up: Pub/Sub dead-lettered a message of {stage}")
        ctx.log.error(why, extra={"stage": ctx.settings.stage, "run_id": run.run_id})
        ctx.conclude(run.run_id, Outcome.run_failed(run.model, stage or ctx.settings.stage, "dead_letter", why))
        ctx.ledger.note(run.run_id, {f"{MARK}.pending": False})
