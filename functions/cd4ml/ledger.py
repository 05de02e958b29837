"""The run ledger in Firestore: ``runs/{run_id}`` (schemas/run.schema.json) and exactly-once effects.

Pub/Sub delivers at least once, so every side effect is guarded by a create-if-absent claim
(``runs/{run_id}/effects/{name}``): claim, act, record the result. A redelivery finds the
result and reuses it; one that finds a claim whose lease expired first asks the external system
(``recover``) before acting again, so a crash between acting and recording loses nothing and doubles
nothing. Events are recorded by id, so recording the same event twice changes nothing.

No write holds a lock: every read-modify-write is optimistic (read, compute, write with the read's update time
as precondition, again on a conflict; ``Ledger._swap``). A Firestore transaction locks what it read until it
commits or expires, so an instance killed inside one (Cloud Run's crash, the chaos session's SIGKILL) would stall
every other writer of that run; the emulator answers them ``ABORTED: Transaction lock timeout`` meanwhile.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cd4ml.errors import Busy, RetryableError
from cd4ml.events import Event, format_time, now
from cd4ml.run import Run, RunId
from cd4ml.transition import Change, apply

if TYPE_CHECKING:
    from google.cloud import firestore

RUNS = "runs"
MODELS = "models"
CACHE = "cache"
ARRIVALS = "arrivals"
EFFECTS = "effects"
LOCKS = "locks"
DELIVERIES = "deliveries"
#: Field of a run record: ids of the events published for it (``Ledger.note_published``).
PUBLISHED = "published"
#: How many rejected messages a run record keeps (the dead-letter hold keeps them all).
KEEP_REJECTIONS = 20
#: An effect claim's lease, renewed every quarter of it while its holder acts (``Ledger.once``): a holder that died
#: frees the claim this long after its last renewal, well inside a message's retry budget.
LEASE = timedelta(seconds=20)


def run_id(model: str, scheduled_time: datetime) -> str:
    """The run id of a model's run scheduled at ``scheduled_time``: same schedule slot, same run."""
    return str(RunId.of(model, scheduled_time))


class Ledger:
    """Run records and effect guards on a Firestore client."""

    def __init__(self, db: firestore.Client) -> None:
        self._db = db

    def _swap(
        self,
        ref: Any,
        compute: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, Any]],
        also: Callable[[Any, Any], None] | None = None,
        attempts: int = 25,
    ) -> Any:
        """Read ``ref``, ``compute(doc)`` → (updates or None, result), write the updates only if nobody wrote the
        document since the read (its update time is the precondition; a create when it did not exist), and start
        over on a conflict. ``also(batch, result)`` adds writes that commit atomically with it (the champion).

        Returns ``result``; contention that outlasts ``attempts`` is a RetryableError (Pub/Sub redelivers).
        """
        from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition

        for attempt in range(attempts):
            snap = ref.get()
            updates, result = compute(snap.to_dict() if snap.exists else None)
            if updates is None:
                return result
            batch = self._db.batch()
            if snap.exists:
                batch.update(ref, updates, option=self._db.write_option(last_update_time=snap.update_time))
            else:
                batch.create(ref, updates)
            if also is not None:
                also(batch, result)
            try:
                batch.commit()
                return result
            except (FailedPrecondition, AlreadyExists, Aborted):
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise RetryableError(f"run ledger busy: {ref.path} changed under {attempts} attempts to write it")

    def _run(self, run_id: str) -> Any:
        return self._db.collection(RUNS).document(run_id)

    def get(self, run_id: str) -> dict[str, Any] | None:
        snap = self._run(run_id).get()
        return snap.to_dict() if snap.exists else None

    def run(self, run_id: str) -> Run | None:
        """The run record as a typed value; None when the ledger does not know the run."""
        doc = self.get(run_id)
        return None if doc is None else Run.from_document(doc)

    def recent(self, limit: int = 10, model: str | None = None) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        from google.cloud import firestore

        query: Any = self._db.collection(RUNS)
        if model:
            query = query.where(filter=firestore.FieldFilter("model", "==", model))
        docs = query.order_by("created_at", direction=firestore.Query.DESCENDING).limit(limit).stream()
        return [d.to_dict() or {} for d in docs]

    def open_run(
        self,
        run_id: str,
        *,
        model: str,
        scheduled_time: datetime,
        trigger: str,
        manifest: Mapping[str, Any],
        event: Event,
    ) -> tuple[dict[str, Any], bool]:
        """Create the run if absent; returns (record, created). A duplicate request gets the existing run."""
        from google.api_core.exceptions import AlreadyExists

        ref = self._run(run_id)
        stamp = format_time(now())
        record = {
            "run_id": run_id,
            "model": model,
            "status": "running",
            "trigger": trigger,
            "scheduled_time": format_time(scheduled_time),
            "created_at": stamp,
            "updated_at": stamp,
            "manifest": dict(manifest),
            "events": [event.summary()],
        }

        try:
            ref.create(record)  # one write; the document's absence is the precondition
        except AlreadyExists:
            existing: dict[str, Any] = ref.get().to_dict() or {}
            return existing, False
        return record, True

    def record(
        self,
        run_id: str,
        event: Event | None = None,
        fields: Mapping[str, Any] | None = None,
        *,
        error: Mapping[str, Any] | None = None,
        status: str | None = None,
        outbox: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Apply a stage's change (``transition.apply``: status rules, de-duplication by event id, champion)
        in one optimistic read-apply-write (the champion commits with it); returns the record after it."""
        ref = self._run(run_id)
        change = Change(
            event=event.summary() if event is not None else None,
            fields=dict(fields or {}),
            error=error,
            status=status,
            outbox=outbox,
        )

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
            if doc is None:
                raise RetryableError(f"run {run_id} is not in the ledger yet")
            applied = apply(doc, change, format_time(now()))
            return (dict(applied.updates) if applied.changed else None), applied

        def champion(batch: Any, applied: Any) -> None:
            if applied.champion is not None:
                champion_ref = self._db.collection(MODELS).document(applied.record["model"])
                batch.set(champion_ref, {"champion": dict(applied.champion)}, merge=True)

        return dict(self._swap(ref, compute, champion).record)

    def note_rejection(self, run_id: str, rejection: Mapping[str, Any]) -> None:
        """Note a rejected message on the run it names (the last ``KEEP_REJECTIONS``); the status is untouched.

        Nothing happens when the run does not exist: a message for an unknown run creates no record.
        """
        from google.api_core.exceptions import NotFound

        ref = self._run(run_id)

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            if doc is None:
                return None, None
            kept = list(doc.get("rejected_messages") or [])[-(KEEP_REJECTIONS - 1) :]
            return {
                "rejected_messages": [*kept, dict(rejection)],
                "rejected_count": int(doc.get("rejected_count") or 0) + 1,
            }, None

        try:
            self._swap(ref, compute)
        except NotFound:
            return

    def count_failure(self, run_id: str, delivery: str) -> int:
        """Count one failed delivery of a message on a subscription (``delivery``); returns the count so far."""
        import hashlib

        from google.cloud import firestore

        ref = self._run(run_id).collection(DELIVERIES).document(hashlib.sha256(delivery.encode()).hexdigest()[:40])
        ref.set({"failures": firestore.Increment(1), "delivery": delivery[:300], "at": format_time(now())}, merge=True)
        return int((ref.get().to_dict() or {}).get("failures", 1))

    def claim(self, run_id: str, name: str) -> dict[str, Any] | None:
        """The claim of the run's effect ``name`` (state, claimed_at, lease_until, attempts, result), if any."""
        snap = self._run(run_id).collection(EFFECTS).document(name).get()
        return dict(snap.to_dict() or {}) if snap.exists else None

    def champion(self, model: str) -> dict[str, Any] | None:
        """The model's current champion: the last run that succeeded."""
        snap = self._db.collection(MODELS).document(model).get()
        if not snap.exists:
            return None
        champion: dict[str, Any] | None = (snap.to_dict() or {}).get("champion")
        return dict(champion) if champion else None

    def cached(self, name: str) -> dict[str, Any] | None:
        """A cache index entry (``cache/{name}``, e.g. ``training-{key}``; cd4ml.cache), or None."""
        snap = self._db.collection(CACHE).document(name).get()
        return (snap.to_dict() or {}) if snap.exists else None

    def remember(self, name: str, entry: Mapping[str, Any]) -> None:
        """Write a cache index entry; a set, so writing it again (a redelivery) changes nothing that matters."""
        self._db.collection(CACHE).document(name).set({**entry, "at": format_time(now())})

    def with_field(self, field: str, value: Any, limit: int = 20) -> list[dict[str, Any]]:
        """Runs whose ``field`` (a dotted path) equals ``value``, newest first (single-field indexes suffice)."""
        from google.cloud import firestore

        query = self._db.collection(RUNS).where(filter=firestore.FieldFilter(field, "==", value))
        runs = [d.to_dict() or {} for d in query.limit(limit).stream()]
        return sorted(runs, key=lambda r: str(r.get("created_at", "")), reverse=True)

    def note_arrival(self, model: str, update: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> bool:
        """Apply ``update`` to ``arrivals/{model}`` (the latest upload under its source prefix) in one
        optimistic read-modify-write; False when it changed nothing (a duplicate or older notification)."""

        ref = self._db.collection(ARRIVALS).document(model)

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
            new = update(doc)  # every field of the document, so updating them all replaces it
            return new, new is not None

        return bool(self._swap(ref, compute))

    def pending_arrivals(self, limit: int = 200) -> list[dict[str, Any]]:
        """The models with an upload that has no run yet."""
        from google.cloud import firestore

        query = self._db.collection(ARRIVALS).where(filter=firestore.FieldFilter("pending", "==", True))
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def answer_arrival(self, model: str, last_upload: str) -> None:
        """Mark the upload at ``last_upload`` as answered by a run, unless a later one arrived meanwhile."""

        ref = self._db.collection(ARRIVALS).document(model)

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            update: dict[str, Any] = {"requested_for": last_upload}
            if (doc or {}).get("last_upload") == last_upload:
                update["pending"] = False
            return update, None

        self._swap(ref, compute)

    def in_flight_training(self, limit: int = 200) -> list[dict[str, Any]]:
        """Runs whose training job was submitted and has not been reported finished."""
        from google.cloud import firestore

        query = self._db.collection(RUNS).where(filter=firestore.FieldFilter("training.active", "==", True))
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def in_flight_canaries(self, limit: int = 200) -> list[dict[str, Any]]:
        """Runs whose canary execution started and has no verdict yet."""
        from google.cloud import firestore

        query = self._db.collection(RUNS).where(filter=firestore.FieldFilter("canary.active", "==", True))
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def awaiting_approval(self, limit: int = 200) -> list[dict[str, Any]]:
        """Runs waiting for a person's decision (status awaiting_approval)."""
        from google.cloud import firestore

        from cd4ml.run import AWAITING_APPROVAL

        query = self._db.collection(RUNS).where(filter=firestore.FieldFilter("status", "==", AWAITING_APPROVAL))
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def stale(self, before: datetime, limit: int = 200) -> list[dict[str, Any]]:
        """Running runs last updated before ``before`` that wait on no training job and no canary (both end on their own)."""
        from google.cloud import firestore

        query = (
            self._db.collection(RUNS)
            .where(filter=firestore.FieldFilter("status", "==", "running"))
            .where(filter=firestore.FieldFilter("updated_at", "<", format_time(before)))
        )
        runs = [d.to_dict() or {} for d in query.limit(limit).stream()]
        return [
            r for r in runs if not (r.get("training") or {}).get("active") and not (r.get("canary") or {}).get("active")
        ]

    def _reclaim(self, ref: Any, lease: timedelta, wait: float, holder: str) -> tuple[str, dict[str, Any] | None]:
        """Someone claimed first: their result, a takeover of their expired lease, or "busy" after ``wait``."""

        def take_over(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, tuple[str, Any]]:
            moment = now()
            doc = doc or {}
            state = _claim_state(doc, moment)
            if state != "expired":
                return None, (state, doc.get("result"))
            taken = {"lease_until": format_time(moment + lease), "attempts": doc.get("attempts", 1) + 1}
            return {**taken, "holder": holder}, (state, None)

        deadline = time.monotonic() + wait
        while True:
            state, result = self._swap(ref, take_over)
            if state != "busy" or time.monotonic() >= deadline:
                return state, result
            time.sleep(0.2)

    def marked(self, field: str, limit: int = 200) -> list[dict[str, Any]]:
        """Runs whose ``field`` (a dotted path) is true (single-field index)."""
        from google.cloud import firestore

        query = self._db.collection(RUNS).where(filter=firestore.FieldFilter(field, "==", True))
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def live_claims(self, run_id: str) -> list[str]:
        """The run's effects being carried out right now: claimed, not done, lease not over."""
        moment = now()
        return sorted(
            d.id
            for d in self._run(run_id).collection(EFFECTS).stream()
            if _claim_state(d.to_dict() or {}, moment) == "busy"
        )

    def note_published(self, run_id: str, event_id: str) -> None:
        """Note that the event ``event_id`` was published for the run: out of the outbox, into ``published``."""

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            if doc is None:
                return None, None
            left = [e for e in doc.get("outbox") or [] if e.get("id") != event_id]
            published = list(doc.get(PUBLISHED) or [])
            return {
                "outbox": left,
                "outbox_pending": bool(left),
                PUBLISHED: published if event_id in published else [*published, event_id],
            }, None

        self._swap(self._run(run_id), compute)

    def note(self, run_id: str, fields: Mapping[str, Any]) -> None:
        """Set fields (dotted paths) without reading the run: for facts no decision depends on.

        No transaction, so concurrent notes on one run never contend; status and events are not touched.
        """
        self._run(run_id).update({**fields, "updated_at": format_time(now())})

    def once(
        self,
        run_id: str,
        name: str,
        act: Callable[[], dict[str, Any]],
        recover: Callable[[], dict[str, Any] | None] | None = None,
        lease: timedelta = LEASE,
        wait: float = 3.0,
    ) -> tuple[dict[str, Any], bool]:
        """Run the side effect ``act`` at most once per (run, name); returns (result, acted_now).

        The claim holds a short ``lease`` that a heartbeat renews while ``recover`` or ``act`` runs, so a slow act
        keeps its claim however long it takes (under load the chaos storm saw acts outlive a fixed 60-90 s lease,
        and a takeover acted a second time), and a holder that died frees it within one lease (a fixed long lease
        outlived the emulator's whole retry budget of ~1 minute: every copy met "busy" and was dead-lettered).

        The claim is a plain create (one write) when nobody claimed before, the common case. A duplicate
        delivery that finds a live claim waits up to ``wait`` seconds for its result, then raises Busy (the
        redelivery comes back later). Short, because a push that waits holds one of the few pushes a subscription
        has in flight (the local relay's: 4) and an instance that serves one request at a time.
        """
        from google.api_core.exceptions import AlreadyExists

        ref = self._run(run_id).collection(EFFECTS).document(name)
        moment = now()
        holder = uuid.uuid4().hex
        try:
            ref.create(
                {
                    "state": "claimed",
                    "lease_until": format_time(moment + lease),
                    "claimed_at": format_time(moment),
                    "attempts": 1,
                    "holder": holder,
                }
            )
            state, result = "claimed", None
        except AlreadyExists:
            state, result = self._reclaim(ref, lease, wait, holder)
        if state == "done":
            return dict(result or {}), False
        if state == "busy":
            raise Busy(f"effect {name} of run {run_id} is being carried out by another delivery")
        try:
            with self._heartbeat(ref, holder, lease):
                found = recover() if (state == "expired" and recover is not None) else None
                result = found if found is not None else act()
        except BaseException:
            # Unknown whether the effect happened: release the claim now, so the next delivery asks the external
            # system first. (A failed ``recover`` kept the claim for a whole lease: the chaos session's Gate outage
            # made every copy of the message meet "busy" until their attempts ran out.)
            ref.update({"lease_until": format_time(now())})
            raise
        acted = found is None
        ref.update({"state": "done", "result": result, "done_at": format_time(now())})
        return result, acted

    @contextlib.contextmanager
    def model_lock(self, model: str, name: str, lease: timedelta = LEASE, wait: float = 10.0) -> Iterator[None]:
        """Hold the model's lock ``name`` while the body runs (one holder at a time, its lease renewed while it
        runs, freed on exit or within a lease after a crash); Busy after ``wait`` seconds of another's hold.

        Promotions of one model take it: with the alias move and the champion's record inside, the next
        promotion sees the champion the last one recorded. Without it, the chaos storm's 51 runs of one model
        interleaved a crashed move, another run's move, and the recovery of the first, which moved the alias
        a second time and back to an older model.
        """
        ref = self._db.collection(MODELS).document(model).collection(LOCKS).document(name)
        holder = uuid.uuid4().hex

        def take(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
            moment = now()
            if doc and doc.get("holder") and str(doc.get("lease_until", "")) > format_time(moment):
                return None, False
            return {"holder": holder, "lease_until": format_time(moment + lease)}, True

        deadline = time.monotonic() + wait
        while not self._swap(ref, take):
            if time.monotonic() >= deadline:
                raise Busy(f"the {name} of model {model} is being carried out for another run")
            time.sleep(0.2)

        def release(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            if not doc or doc.get("holder") != holder:
                return None, None
            return {"holder": "", "lease_until": format_time(now())}, None

        try:
            with self._heartbeat(ref, holder, lease):
                yield
        finally:
            with contextlib.suppress(Exception):  # not released: free again within one lease
                self._swap(ref, release)

    @contextlib.contextmanager
    def _heartbeat(self, ref: Any, holder: str, lease: timedelta) -> Iterator[None]:
        """Renew the claim's lease every quarter lease while the body runs, as long as ``holder`` still holds it."""
        stop = threading.Event()

        def renew(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
            if not doc or doc.get("holder") != holder or doc.get("state") == "done":
                return None, False
            return {"lease_until": format_time(now() + lease)}, True

        def beat() -> None:
            while not stop.wait(lease.total_seconds() / 4):
                try:
                    if not self._swap(ref, renew, attempts=3):
                        return
                except Exception:  # a missed beat is retried; the lease lasts three more
                    continue

        thread = threading.Thread(target=beat, name=f"lease-{ref.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


def _claim_state(doc: Mapping[str, Any], moment: datetime) -> str:
    if doc.get("state") == "done":
        return "done"
    return "busy" if doc.get("lease_until", "") > format_time(moment) else "expired"
