"""What every stage shares: the per-process context and the dispatch that maps errors to Pub/Sub outcomes.

A handler returns normally for "done" (the message is acknowledged) and raises for "retry" (HTTP 500,
Pub/Sub redelivers, and after the subscription's maximum attempts dead-letters). A PermanentError is
logged once at ERROR with every problem, recorded on the run, and the message is copied to the stage's
dead-letter topic before it is acknowledged: bad input is never retried forever and never lost.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cd4ml import catalog, clients, logs, push
from cd4ml.bus import Bus, bounded
from cd4ml.errors import Busy, InvalidEvent, InvalidSettings, PermanentError, RetryableError
from cd4ml.events import RUN_FAILED, RUN_REQUESTED, Event, PubSubMessage, format_time, now, parse_time, plain
from cd4ml.ledger import PUBLISHED, Ledger, deferring
from cd4ml.outcome import Outcome
from cd4ml.run import TERMINAL, Run, RunId, is_run_id
from cd4ml.settings import Settings
from cd4ml.store import Counting, Filter, FirestoreStore

#: Set (to anything) to log the Firestore reads, writes and commits each handled message cost (``python -m
#: benchmarks`` sets it: what production bills per run). Not a CD4ML_ setting: the local stack passes it through.
METER = "FIRESTORE_OPERATIONS_LOG"

if TYPE_CHECKING:
    from cloudevents.http import CloudEvent
    from google.cloud import storage

Handler = Callable[[PubSubMessage, "Context"], None]


class Context:
    """Settings and lazily built clients of one process (one stage)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log = logs.get(settings.stage)

    @cached_property
    def observer(self) -> bool:
        """An observer stage (catalog ``observer``) never ends a run: Pub/Sub alone dead-letters what it gives up on."""
        try:
            return catalog.load().stage(self.settings.stage).observer
        except KeyError:
            return False

    @cached_property
    def emits(self) -> tuple[str, ...]:
        """The events this stage may emit (catalog ``emits``): ``conclude`` lets out no other."""
        try:
            return catalog.load().stage(self.settings.stage).emits
        except KeyError:
            return ()

    @property
    def source(self) -> str:
        """ce-source of the events this stage emits."""
        s = self.settings
        return f"//cloudfunctions.googleapis.com/projects/{s.project}/locations/{s.region}/functions/{s.stage}"

    @cached_property
    def ledger(self) -> Ledger:
        store = FirestoreStore(clients.firestore_client(self.settings))
        return Ledger(Counting(store) if os.environ.get(METER) else store)

    @cached_property
    def bus(self) -> Bus:
        return Bus(self.settings.project)

    @cached_property
    def storage(self) -> storage.Client:
        return clients.storage_client(self.settings)

    @cached_property
    def jobs(self) -> Any:
        return clients.job_service_client(self.settings)

    @cached_property
    def builds(self) -> Any:
        return clients.cloud_build_client(self.settings)

    def info(self, message: str, run_id: str = "", **details: Any) -> None:
        """An INFO line; it names the Pub/Sub message being handled (``message_id``), so what a stage rightly
        ignored can be traced to the message it ignored."""
        handling = _HANDLING.get()
        if handling:
            details.setdefault("message_id", handling)
        self.log.info(message, extra={"stage": self.settings.stage, "run_id": run_id or None, "details": details})

    def conclude(
        self, run_id: str, outcome: Outcome, check: Callable[[Mapping[str, Any]], None] | None = None
    ) -> Event | None:
        """Record ``outcome`` on the run, then publish its event once; both idempotent by event id.

        The event is published only after the record that justifies it committed (one optimistic read-apply-write
        of the run, ``Ledger._swap``), and noted as published after. A redelivery (or a duplicate) finds it noted
        and publishes nothing: re-publishing on every duplicate multiplied the messages at each hop of the chain
        (the chaos session's triple delivery turned one request into hundreds of deliveries downstream). One
        whose earlier attempt died between the record and the note publishes again, with the recorded time.
        ``check`` (``Ledger.record``'s) runs on the record as the optimistic write reads it and may raise to refuse.
        """
        stage = outcome.error_stage or self.settings.stage
        error = {"stage": stage, "message": outcome.error} if outcome.error else None
        if outcome.emit is None:
            if outcome.record and check is not None:
                self.ledger.record(run_id, None, outcome.record, check=check)
            elif outcome.record:
                self.ledger.note(run_id, outcome.record)
            self.info(outcome.note, run_id)
            return None
        type_, data = outcome.emit
        if type_ not in self.emits:
            raise Undeclared(f"stage {self.settings.stage} may not emit {type_}: catalog.yaml declares {self.emits}")
        event = Event.new(type_, run_id, data, source=self.source)
        outbox = {**event.summary(), "data": plain(event.data)}
        if type_ == RUN_FAILED:
            check = _not_ended(event.id)
        try:
            record = self.ledger.record(run_id, event, outcome.record, error=error, outbox=outbox, check=check)
        except _Ended as ended:
            self.info(f"run already ended {ended.status}; {type_} not announced", run_id)
            return None
        if event.id in (record.get(PUBLISHED) or ()):
            self.info(f"{type_} already published", run_id, event_id=event.id, event_type=type_)
            return event
        for seen in record.get("events", []):
            if seen.get("id") == event.id and seen.get("time") != format_time(event.time):
                event = Event(
                    type=event.type,
                    subject=event.subject,
                    data=event.data,
                    id=event.id,
                    source=event.source,
                    time=parse_time(seen["time"]),
                )
        self.bus.publish(event)
        self.ledger.note_published(run_id, event.id)
        self.info(f"emitted {type_}", run_id, event_id=event.id, event_type=type_)
        return event

    def once(
        self,
        run_id: str,
        act: Callable[[], dict[str, Any]],
        recover: Callable[[], dict[str, Any] | None] | None = None,
        key: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """Run this stage's one effect (its registered ``effect``; ``key`` tells one of several apart, notify's
        channel) at most once for the run (``Ledger.once``); Undeclared for a stage that registers none."""
        from cd4ml import stages

        effect = stages.stage(self.settings.stage).effect
        if not effect:
            raise Undeclared(f"stage {self.settings.stage} registers no effect (cd4ml.stages.STAGES)")
        return self.ledger.once(run_id, f"{effect}-{key}" if key else effect, act, recover=recover)

    def request_run(self, run_id: str, data: Mapping[str, Any]) -> Event:
        """Publish run.requested for a run that has no record yet (fetch_data opens it, once per run id). The one
        event published without a run's outbox: the caller marks its own source answered after this returns, so a
        crash in between requests the same run id again, which fetch_data takes once."""
        if RUN_REQUESTED not in self.emits:
            raise Undeclared(
                f"stage {self.settings.stage} may not emit {RUN_REQUESTED}: catalog.yaml declares {self.emits}"
            )
        event = Event.new(RUN_REQUESTED, run_id, data, source=self.source)
        self.bus.publish(event)
        self.info(f"emitted {RUN_REQUESTED}", run_id, event_id=event.id, event_type=RUN_REQUESTED)
        return event

    def flush_outbox(self, older_than_seconds: float = 30.0) -> int:
        """Publish this stage's events that were recorded but never published (the delivery died in between) and
        are older than ``older_than_seconds``; returns how many. Called on each tick by the stages a tick drives:
        nothing redelivers their input (the chaos session found canary.succeeded and training.completed recorded,
        the run no longer "in flight", and never published). Message-driven stages republish on redelivery."""
        mine = set(catalog.load().stage(self.settings.stage).emits)
        cutoff = format_time(now() - timedelta(seconds=older_than_seconds))
        flushed = 0
        for doc in self.ledger.marked("outbox_pending"):
            for entry in doc.get("outbox") or []:
                if entry.get("type") not in mine or str(entry.get("time", "")) > cutoff:
                    continue
                event = Event(
                    type=str(entry["type"]),
                    subject=str(doc["run_id"]),
                    data=entry.get("data") or {},
                    id=str(entry["id"]),
                    source=str(entry.get("source") or self.source),
                    time=parse_time(str(entry["time"])),
                )
                self.bus.publish(event)
                self.ledger.note_published(event.subject, event.id)
                self.info(f"published {event.type} from the outbox", event.subject, event_id=event.id)
                flushed += 1
        return flushed

    def reject(self, message: PubSubMessage, error: PermanentError) -> None:
        """Log once, note it on the run it names (the run goes on), and dead-letter the message.

        A malformed message is not a fact about the run: its status never changes because of one, so the
        corrected message (or the scheduler's real one for that slot) still continues or starts it.
        """
        named = error.run_id or message.attributes.get("ce-subject", "")
        run_id = named if is_run_id(named) else ""
        self.log.error(
            bounded(error.message, 4096),
            extra={
                "stage": self.settings.stage,
                "run_id": run_id or None,
                "event_id": message.message_id,
                "details": {
                    "problems": [bounded(p, 1024) for p in error.problems[:50]],
                    "error_type": type(error).__name__,
                    "dead_letter_topic": self.settings.dead_letter_topic,
                },
            },
        )
        if run_id:
            self.ledger.note_rejection(
                run_id,
                {
                    "stage": self.settings.stage,
                    "message_id": message.message_id,
                    "reason": bounded(error.message, 1024),
                    "at": format_time(now()),
                },
            )
        self.bus.dead_letter(self.settings.dead_letter_topic, message, stage=self.settings.stage, error=error.message)

    def last_delivery(self, message: PubSubMessage, error: Exception | None = None) -> bool:
        """True when this failed delivery is the subscription's last (``max_delivery_attempts``).

        Pub/Sub says which attempt this is (``deliveryAttempt``, also on the local stack's push relay); where it
        does not, the failures are counted on the run, per subscription and message. Messages naming no run are left to
        Pub/Sub's dead-letter policy. The error is noted on the run (``last_failure``), so a run that
        ``on_dead_letter`` ends later still names the cause (an outage) and not only the missing answer.
        """
        run_id = message.attributes.get("ce-subject", "")
        if not is_run_id(run_id):
            return False
        if error is not None:
            failure = {"stage": self.settings.stage, "error": bounded(f"{type(error).__name__}: {error}", 1024)}
            with contextlib.suppress(Exception):  # best effort: the retry matters more than the note
                self.ledger.note(run_id, {"last_failure": {**failure, "at": format_time(now())}})
        limit = catalog.load().delivery.max_delivery_attempts
        if message.delivery_attempt:
            return message.delivery_attempt >= limit
        return self.ledger.count_failure(run_id, f"{message.subscription}/{message.message_id}") >= limit

    def give_up(self, message: PubSubMessage, error: Exception) -> None:
        """The last delivery failed: end the run failed now, with the stage and the last error, and dead-letter
        the message with that reason (``cd4ml dead-letters replay`` sends it again once the cause is fixed)."""
        run_id = message.attributes["ce-subject"]
        limit = catalog.load().delivery.max_delivery_attempts
        reason = bounded(
            f"gave up after {limit} deliveries of {message.attributes.get('ce-type', 'a message')} "
            f"{message.message_id}: {type(error).__name__}: {error}",
            1024,
        )
        self.log.error(
            reason,
            extra={
                "stage": self.settings.stage,
                "run_id": run_id,
                "event_id": message.message_id,
                "details": {"dead_letter_topic": self.settings.dead_letter_topic},
            },
        )
        model = RunId.parse(run_id).model
        self.conclude(run_id, Outcome.run_failed(model, self.settings.stage, "gave_up", reason))
        self.bus.dead_letter(
            self.settings.dead_letter_topic, message, stage=self.settings.stage, error=reason, exhausted=True
        )


class Undeclared(Exception):
    """A stage tried to emit an event its catalog entry does not declare: a defect, never published."""


class _Ended(Exception):
    """The run ended before this ending could be recorded: the first ending stands, and is the one announced."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _not_ended(event_id: str) -> Callable[[Mapping[str, Any]], None]:
    """A record check refusing a second ending: a run already ended (by another event) announces no run.failed."""

    def check(record: Mapping[str, Any]) -> None:
        status = str(record.get("status", ""))
        if status in TERMINAL and all(e.get("id") != event_id for e in record.get("events") or ()):
            raise _Ended(status)

    return check


#: The id of the Pub/Sub message this thread is handling (dispatch), for the log lines about it.
_HANDLING: contextvars.ContextVar[str] = contextvars.ContextVar("cd4ml_handling", default="")


@functools.cache
def context() -> Context:
    """The context of this process, built on first use."""
    logs.configure()
    quiet_libraries()
    settings = Settings.from_env()
    if not settings.stage or not settings.dead_letter_topic:
        raise InvalidSettings("a function needs CD4ML_STAGE and CD4ML_DEAD_LETTER_TOPIC set")
    return Context(settings)


def dispatch(cloud_event: CloudEvent, handler: Handler) -> None:
    """Run ``handler`` on the Pub/Sub message pushed (read from the request Pub/Sub sent, ``push.message``)."""
    ctx = context()
    try:
        message = push.message(cloud_event.data)
    except PermanentError as error:
        raw = json.dumps(cloud_event.data, default=str).encode() if cloud_event.data is not None else b""
        message = PubSubMessage(message_id=str(cloud_event["id"]), publish_time=now(), attributes={}, data=raw)
        ctx.reject(message, error)
        return
    beyond = push.limit_problem(message)
    if beyond:  # not from Pub/Sub: one dead letter (cut to fit), and the sender hears why
        ctx.reject(message, InvalidEvent("not a Pub/Sub message", [beyond]))
        raise push.Refused(413, beyond, logged=True)
    token = _HANDLING.set(message.message_id)
    meter = ctx.ledger.store if os.environ.get(METER) else None
    before = meter.mine() if isinstance(meter, Counting) else None
    try:
        with deferring():  # a claim's done mark commits with the run's record (ledger.deferring)
            handler(message, ctx)
    except PermanentError as error:
        ctx.reject(message, error)
    except Exception as error:  # retryable: raised again (HTTP 500, redelivery) unless this was the last delivery
        if ctx.observer or isinstance(error, Busy) or not ctx.last_delivery(message, error):
            raise
        ctx.give_up(message, error)
    finally:
        if isinstance(meter, Counting) and before is not None:
            spent = meter.mine() - before
            ctx.info(
                "firestore operations",
                message.attributes.get("ce-subject", ""),
                reads=spent.reads,
                writes=spent.writes,
                commits=spent.commits,
            )
        _HANDLING.reset(token)


def require_run(ctx: Context, event: Event) -> Run:
    """The run an event belongs to; PermanentError when the event names no run the ledger knows."""
    if not event.subject:
        raise PermanentError(f"{event.type} event {event.id} has no ce-subject (run id)")
    if not is_run_id(event.subject):
        raise PermanentError(
            f"{event.type} event {event.id}: ce-subject {event.subject[:80]!r} is not a run id "
            "(MODEL-YYYYMMDDtHHMMSSz)",
            run_id=None,
        )
    run = ctx.ledger.run(event.subject)
    if run is None:
        raise PermanentError(
            f"{event.type} event {event.id} names run {event.subject!r}, which the ledger does not know", run_id=None
        )
    return run


def active_run(ctx: Context, event: Event) -> Run | None:
    """The event's run while it is still running; None (logged) when it already ended, so the event is moot."""
    run = require_run(ctx, event)
    if run.ended:
        ctx.info(f"run already ended {run.status}; {event.type} ignored", event.subject)
        return None
    return run


def checked_run(ctx: Context, event: Event) -> Run | None:
    """The event's running run once it holds what this stage requires of it (its ``requires`` in the registry of
    stages); RecordDisagrees (a PermanentError: dead letter, reason, run unchanged) when the record says otherwise."""
    from cd4ml import requirements, stages

    run = active_run(ctx, event)
    if run is not None:
        requirements.check(ctx.settings.stage, stages.stage(ctx.settings.stage).requires, run, event)
    return run


def sweep(
    ctx: Context,
    filters: Sequence[Filter],
    each: Callable[[Run], None],
    *,
    doing: str,
    trouble: Callable[[Run, Exception], None] | None = None,
    also: tuple[type[Exception], ...] = (),
    ended_too: bool = False,
) -> int:
    """A tick stage's steps, per run of one ledger query: every run matching ``filters`` (typed; an ended one skipped
    unless ``ended_too``) goes through ``each`` (decide, act once, conclude), and one run's trouble (the ledger busy,
    a Google API error, or one of ``also``) is logged ("could not DOING; next tick retries") and handed to
    ``trouble`` without stopping the others. Returns how many runs the query matched."""
    from google.api_core.exceptions import GoogleAPICallError

    caught: tuple[type[Exception], ...] = (RetryableError, GoogleAPICallError, *also)
    docs = ctx.ledger.where(*filters)
    for doc in docs:
        run = Run.from_document(doc)
        if run.ended and not ended_too:
            continue
        try:
            each(run)
        except caught as problem:
            ctx.log.warning(
                f"could not {doing}; next tick retries: {problem}",
                extra={"stage": ctx.settings.stage, "run_id": run.run_id},
            )
            if trouble is not None:
                trouble(run, problem)
    return len(docs)


def quiet_libraries() -> None:
    """Keep client libraries' chatter below WARNING in the JSON log stream."""
    for name in ("google", "urllib3", "grpc"):
        logging.getLogger(name).setLevel(logging.WARNING)
