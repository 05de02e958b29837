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
- a message whose work another delivery is carrying out right now (a live claim, ``Ledger.live_claims``): asked
  again later (Pub/Sub's backoff outlasts every lease), when the holder has finished or its lease is over;
- otherwise the run ends ``failed`` now, naming the stage and the attempts, and the message stays held for
  ``cd4ml dead-letters replay``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cd4ml import catalog
from cd4ml.bus import bounded
from cd4ml.errors import RetryableError
from cd4ml.events import PubSubMessage
from cd4ml.run import Run, is_run_id
from cd4ml.runtime import Context

#: Attributes Pub/Sub adds to a message it dead-letters (https://cloud.google.com/pubsub/docs/handling-failures).
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
HANDLED_BY = ("cd4ml-rejected-by", "cd4ml-exhausted-by")


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
    """A dead-lettered message → its run ended failed, unless it was handled, names no live run, or its work was done."""
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
    claims = ctx.ledger.live_claims(run_id)
    if claims:
        raise RetryableError(f"{stage} of run {run_id} is still carrying out {', '.join(claims)}; deciding later")
    why = reason(message, stage)
    ctx.log.error(why, extra={"stage": ctx.settings.stage, "run_id": run_id, "event_id": message.message_id})
    ctx.ledger.record(run_id, status="failed", error={"stage": stage, "message": why})
