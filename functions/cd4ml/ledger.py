"""The run ledger in Firestore: ``runs/{run_id}`` (schemas/run.schema.json) and exactly-once effects.

Pub/Sub delivers at least once, so every side effect is guarded by a create-if-absent claim
(``runs/{run_id}/effects/{name}``): claim, act, record the result. A redelivery finds the
result and reuses it; one that finds a claim whose lease expired first asks the external system
(``recover``) before acting again, so a crash between acting and recording loses nothing and doubles
nothing. Events are recorded by id, so recording the same event twice changes nothing.

No write holds a lock: every read-modify-write is optimistic (read, compute, write with the read's version
as precondition, again on a conflict; ``Ledger._swap``). A Firestore transaction locks what it read until it
commits or expires, so an instance killed inside one (Cloud Run's crash, the chaos session's SIGKILL) would stall
every other writer of that run; the emulator answers them ``ABORTED: Transaction lock timeout`` meanwhile.

Leases (an effect's claim, a model's lock) are judged by the server's time only: the holder writes its heartbeat as
the server's timestamp (``beat_at``, ``store.SERVER_TIME``) with the lease's length (``lease_seconds``), and a lease
is over when ``beat_at + lease_seconds`` is not after the server's time of the read that judges it
(``Snapshot.read_time``). An instance whose clock is an hour off neither takes over a live claim nor holds a lease
the server says is over.

Writes per hop are few: a write computed on a document this instance just read or wrote carries that version as its
precondition and needs no read (``_known``); a holder marks its claim done, renews or releases it with the version it
last wrote, falling back to a read only when someone wrote in between.
"""

from __future__ import annotations

import contextlib
import copy
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cd4ml.errors import Busy, RetryableError
from cd4ml.events import Event, format_time, now
from cd4ml.run import Run, RunId
from cd4ml.store import (
    SERVER_TIME,
    Committed,
    Filter,
    FirestoreStore,
    MemoryStore,
    Snapshot,
    Store,
    Write,
    with_updates,
)
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
#: Run documents whose last known version an instance keeps (``Ledger._known``): a write computed on one needs no read.
KNOWN = 64


def run_id(model: str, scheduled_time: datetime) -> str:
    """The run id of a model's run scheduled at ``scheduled_time``: same schedule slot, same run."""
    return str(RunId.of(model, scheduled_time))


class Ledger:
    """Run records and effect guards over a document store (Firestore, or memory in unit tests).

    Only generic operations live here (read, record, note, once, locks, queries by field); what a stage asks of
    the ledger (its in-flight runs, say) is that stage's own query through ``where``.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        #: Run documents as this instance last read or wrote them (at most ``KNOWN``), for ``_swap``'s first attempt.
        self._known: OrderedDict[str, Snapshot] = OrderedDict()
        self._known_lock = threading.Lock()

    @classmethod
    def firestore(cls, db: firestore.Client) -> Ledger:
        """The ledger in Firestore (production; the emulator on the local stack)."""
        return cls(FirestoreStore(db))

    @classmethod
    def in_memory(cls) -> Ledger:
        """A ledger in memory (unit tests: stage handlers run against it, no process)."""
        return cls(MemoryStore())

    @property
    def store(self) -> Store:
        return self._store

    def _swap(
        self,
        path: str,
        compute: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, Any]],
        also: Callable[[Any], list[Write]] | None = None,
        attempts: int = 25,
        on_conflict: Callable[[], None] | None = None,
    ) -> Any:
        """Read ``path``, ``compute(doc)`` → (updates or None, result), write the updates only if nobody wrote the
        document since the read (its version is the precondition; a create when it did not exist), and start
        over on a conflict. ``also(result)`` gives writes that commit atomically with it (the champion).

        The first attempt computes on the version this instance last read or wrote, when it knows one
        (``_known``): the precondition proves it current, so the write needs no read; a conflict (or a compute
        that would write nothing) reads again. ``on_conflict()`` runs after a commit that failed. Returns ``result``;
        contention that outlasts ``attempts`` is a RetryableError (Pub/Sub redelivers).
        """
        known = self._known_snapshot(path)
        for attempt in range(attempts):
            snap = known if known is not None else self._read(path)
            try:
                updates, result = compute(snap.data)
            except Exception:
                if known is None:
                    raise
                known = None  # refused on what this instance knew: only what the server holds may refuse
                continue
            if updates is None:
                if known is None:
                    return result
                known = None  # nothing to write on what this instance knew: decide on what the server holds
                continue
            if self._write_on(snap, path, updates, also(result) if also is not None else []):
                return result
            known = None
            if on_conflict is not None:
                on_conflict()
            time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise RetryableError(f"run ledger busy: {path} changed under {attempts} attempts to write it")

    def _swap_timed(
        self,
        path: str,
        compute: Callable[[Snapshot], tuple[dict[str, Any] | None, Any]],
        attempts: int = 25,
    ) -> tuple[Any, Committed | None]:
        """``_swap`` for a lease: always on a fresh read, since ``compute`` judges it by the read's server time;
        returns (result, the commit) so the holder can write next with the version it wrote."""
        for attempt in range(attempts):
            snap = self._read(path)
            updates, result = compute(snap)
            if updates is None:
                return result, None
            committed = self._write_on(snap, path, updates, [])
            if committed:
                return result, committed
            time.sleep(random.uniform(0, min(1.0, 0.01 * 2**attempt)))
        raise RetryableError(f"run ledger busy: {path} changed under {attempts} attempts to write it")

    def _read(self, path: str) -> Snapshot:
        snap = self._store.read(path)
        self._remember(path, snap)
        return snap

    def _write_on(self, snap: Snapshot, path: str, updates: dict[str, Any], also: list[Write]) -> Committed | None:
        """Commit ``updates`` on ``snap`` (its version as precondition) with ``also``; None on a conflict. What was
        written becomes the known version of the document (unless the server fills a field of it)."""
        write = Write("update", path, updates, snap.version) if snap.exists else Write("create", path, updates)
        committed = self._store.commit([write, *also])
        if committed is None:
            self._forget(path)
            return None
        after = with_updates(snap.data or {}, updates) if snap.exists else dict(updates)
        if _has_server_time(updates):
            self._forget(path)
        else:
            self._remember(path, Snapshot(after, committed.versions[0]))
        return committed

    def _known_snapshot(self, path: str) -> Snapshot | None:
        if not path.startswith(f"{RUNS}/") or path.count("/") != 1:
            return None  # only run documents: their writers are this ledger's optimistic writes
        with self._known_lock:
            known = self._known.get(path)
        return None if known is None else Snapshot(copy.deepcopy(known.data), known.version)

    def _remember(self, path: str, snap: Snapshot) -> None:
        if not snap.exists or not path.startswith(f"{RUNS}/") or path.count("/") != 1:
            return
        data = copy.deepcopy(snap.data)  # the caller may change its copy
        with self._known_lock:
            self._known[path] = Snapshot(data, snap.version)
            self._known.move_to_end(path)
            while len(self._known) > KNOWN:
                self._known.popitem(last=False)

    def _forget(self, path: str) -> None:
        with self._known_lock:
            self._known.pop(path, None)

    @staticmethod
    def _run(run_id: str) -> str:
        return f"{RUNS}/{run_id}"

    def get(self, run_id: str) -> dict[str, Any] | None:
        return self._read(self._run(run_id)).data

    def run(self, run_id: str) -> Run | None:
        """The run record as a typed value; None when the ledger does not know the run."""
        doc = self.get(run_id)
        return None if doc is None else Run.from_document(doc)

    def where(
        self, *filters: Filter, order_by: str = "", descending: bool = False, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Run records matching every ``(field, op, value)`` (dotted paths; single-field indexes suffice)."""
        return self._store.query(RUNS, filters, order_by=order_by, descending=descending, limit=limit)

    def recent(self, limit: int = 10, model: str | None = None) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        filters: tuple[Filter, ...] = (("model", "==", model),) if model else ()
        return self.where(*filters, order_by="created_at", descending=True, limit=limit)

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
        # One write, the document's absence its precondition; what it wrote becomes the known version, so the
        # stage's record of its event (fetch_data's data.fetched) commits on it without reading the run again.
        if self._write_on(Snapshot(None), self._run(run_id), record, []):
            return record, True
        return self.get(run_id) or {}, False

    def record(
        self,
        run_id: str,
        event: Event | None = None,
        fields: Mapping[str, Any] | None = None,
        *,
        error: Mapping[str, Any] | None = None,
        status: str | None = None,
        outbox: Mapping[str, Any] | None = None,
        check: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Apply a stage's change (``transition.apply``: status rules, de-duplication by event id, champion)
        in one optimistic read-apply-write (the champion commits with it); returns the record after it.

        ``check(record)`` runs on the record as read, inside the optimistic write, and may raise to refuse the
        change (a decision on a run that ended meanwhile): what it checked is what the write's precondition holds.
        """
        _only_facts(fields or {})
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
            if check is not None:
                check(doc)
            applied = apply(doc, change, format_time(now()))
            return (dict(applied.updates) if applied.changed else None), applied

        taken: list[tuple[str, _Hold, dict[str, Any]]] = []

        def champion(applied: Any) -> list[Write]:  # and the done marks waiting for this record (``deferring``)
            taken[:] = self._pending()
            deferred = [Write("update", path, fields, hold.version) for path, hold, fields in taken]
            if applied.champion is None:
                return deferred
            model = f"{MODELS}/{applied.record['model']}"
            return [Write("merge", model, {"champion": dict(applied.champion)}), *deferred]

        recorded = self._swap(self._run(run_id), compute, champion, on_conflict=_flush_deferred)
        waiting = _deferred()
        waiting[:] = [w for w in waiting if (w[1], w[2], w[3]) not in taken]  # the last (successful) commit wrote them
        return dict(recorded.record)

    def note_rejection(self, run_id: str, rejection: Mapping[str, Any]) -> None:
        """Note a rejected message on the run it names (the last ``KEEP_REJECTIONS``); the status is untouched.

        Nothing happens when the run does not exist: a message for an unknown run creates no record.
        """

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            if doc is None:
                return None, None
            kept = list(doc.get("rejected_messages") or [])[-(KEEP_REJECTIONS - 1) :]
            return {
                "rejected_messages": [*kept, dict(rejection)],
                "rejected_count": int(doc.get("rejected_count") or 0) + 1,
            }, None

        self._swap(self._run(run_id), compute)

    def count_failure(self, run_id: str, delivery: str) -> int:
        """Count one failed delivery of a message on a subscription (``delivery``); returns the count so far."""
        import hashlib

        path = f"{self._run(run_id)}/{DELIVERIES}/{hashlib.sha256(delivery.encode()).hexdigest()[:40]}"
        return self._store.increment(path, "failures", {"delivery": delivery[:300], "at": format_time(now())})

    def claim(self, run_id: str, name: str) -> dict[str, Any] | None:
        """The claim of the run's effect ``name`` (state, claimed_at, lease_until, attempts, result), if any."""
        return self._store.read(f"{self._run(run_id)}/{EFFECTS}/{name}").data

    def champion(self, model: str) -> dict[str, Any] | None:
        """The model's current champion: the last run that succeeded."""
        doc = self._store.read(f"{MODELS}/{model}").data
        champion: dict[str, Any] | None = (doc or {}).get("champion")
        return dict(champion) if champion else None

    def champions(self) -> list[tuple[str, dict[str, Any]]]:
        """Every model's document (its champion), by model name."""
        return self._store.ids(MODELS)

    def cached(self, name: str) -> dict[str, Any] | None:
        """A cache index entry (``cache/{name}``, e.g. ``training-{key}``; cd4ml.cache), or None."""
        return self._store.read(f"{CACHE}/{name}").data

    def remember(self, name: str, entry: Mapping[str, Any]) -> None:
        """Write a cache index entry; writing it again (a redelivery) changes nothing that matters."""
        self._store.commit([Write("merge", f"{CACHE}/{name}", {**entry, "at": format_time(now())})])

    def with_field(self, field: str, value: Any, limit: int = 20) -> list[dict[str, Any]]:
        """Runs whose ``field`` (a dotted path) equals ``value``, newest first (single-field indexes suffice)."""
        runs = self.where((field, "==", value), limit=limit)
        return sorted(runs, key=lambda r: str(r.get("created_at", "")), reverse=True)

    def note_arrival(self, model: str, update: Callable[[dict[str, Any] | None], dict[str, Any] | None]) -> bool:
        """Apply ``update`` to ``arrivals/{model}`` (the latest upload under its source prefix) in one
        optimistic read-modify-write; False when it changed nothing (a duplicate or older notification)."""

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
            new = update(doc)  # every field of the document, so updating them all replaces it
            return new, new is not None

        return bool(self._swap(f"{ARRIVALS}/{model}", compute))

    def arrivals(self, *filters: Filter, limit: int = 200) -> list[dict[str, Any]]:
        """Arrival records (``arrivals/{model}``) matching every filter."""
        return self._store.query(ARRIVALS, filters, limit=limit)

    def answer_arrival(self, model: str, last_upload: str) -> None:
        """Mark the upload at ``last_upload`` as answered by a run, unless a later one arrived meanwhile."""

        def compute(doc: dict[str, Any] | None) -> tuple[dict[str, Any] | None, None]:
            update: dict[str, Any] = {"requested_for": last_upload}
            if (doc or {}).get("last_upload") == last_upload:
                update["pending"] = False
            return update, None

        self._swap(f"{ARRIVALS}/{model}", compute)

    def marked(self, field: str, limit: int = 200) -> list[dict[str, Any]]:
        """Runs whose ``field`` (a dotted path) is true (single-field index)."""
        return self.where((field, "==", True), limit=limit)

    def live_claims(self, run_id: str) -> list[str]:
        """The run's effects being carried out right now: claimed, not done, lease not over (by the server's time)."""
        effects = f"{self._run(run_id)}/{EFFECTS}"
        pending = [name for name, doc in self._store.ids(effects) if doc.get("state") != "done"]
        return sorted(name for name in pending if _claim_state(self._store.read(f"{effects}/{name}")) == "busy")

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
        Missing (a LookupError) when the run does not exist.
        """
        _only_facts(fields)
        self._store.update(self._run(run_id), {**fields, "updated_at": format_time(now())})

    def _reclaim(self, path: str, lease: timedelta, wait: float, hold: _Hold) -> tuple[str, dict[str, Any] | None]:
        """Someone claimed first: their result, a takeover of their expired lease, or "busy" after ``wait``."""

        def take_over(snap: Snapshot) -> tuple[dict[str, Any] | None, tuple[str, Any]]:
            doc = snap.data or {}
            state = _claim_state(snap)
            if state != "expired":
                return None, (state, doc.get("result"))
            return {**_lease(lease), "attempts": doc.get("attempts", 1) + 1, "holder": hold.holder}, (state, None)

        deadline = time.monotonic() + wait
        while True:
            (state, result), committed = self._swap_timed(path, take_over)
            if committed:
                hold.wrote(committed)
            if state != "busy" or time.monotonic() >= deadline:
                return state, result
            time.sleep(0.2)

    def _fenced(self, path: str, hold: _Hold, fields: Mapping[str, Any]) -> bool:
        """Write ``fields`` on a claim or lock only while ``hold``'s holder still holds it (the holder is the fencing
        token): an instance whose lease ran out and was taken over never overwrites its successor's claim.

        One write when nobody wrote since the holder's last write (its version is the precondition); otherwise a
        read checks the holder first."""
        version = hold.version
        if version is not None:
            committed = self._store.commit([Write("update", path, dict(fields), version)])
            if committed:
                hold.wrote(committed)
                return True

        def compute(snap: Snapshot) -> tuple[dict[str, Any] | None, bool]:
            if not snap.data or snap.data.get("holder") != hold.holder:
                return None, False
            return dict(fields), True

        fenced, committed = self._swap_timed(path, compute)
        if committed:
            hold.wrote(committed)
        return bool(fenced)

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
        The lease is the server's (module docstring): a skewed instance clock moves nobody's lease.

        The claim is a plain create (one write) when nobody claimed before, the common case, and marking it done
        is one more (the version the claim was written at is its precondition). A duplicate delivery that finds a
        live claim waits up to ``wait`` seconds for its result, then raises Busy (the redelivery comes back later).
        Short, because a push that waits holds one of the few pushes a subscription has in flight (the local
        relay's: 4) and an instance that serves one request at a time. Releasing the claim and marking it done are
        fenced by the holder: a takeover's claim is never overwritten.
        """
        path = f"{self._run(run_id)}/{EFFECTS}/{name}"
        hold = _Hold(uuid.uuid4().hex)
        claim = {
            "state": "claimed",
            **_lease(lease),
            "claimed_at": format_time(now()),
            "attempts": 1,
            "holder": hold.holder,
        }
        created = self._store.commit([Write("create", path, claim)])
        if created:
            hold.wrote(created)
        state, result = ("claimed", None) if created else self._reclaim(path, lease, wait, hold)
        if state == "done":
            return dict(result or {}), False
        if state == "busy":
            raise Busy(f"effect {name} of run {run_id} is being carried out by another delivery")
        try:
            with self._heartbeat(path, hold, lease):
                found = recover() if (state == "expired" and recover is not None) else None
                result = found if found is not None else act()
        except BaseException:
            # Unknown whether the effect happened: release the claim now, so the next delivery asks the external
            # system first. (A failed ``recover`` kept the claim for a whole lease: the chaos session's Gate outage
            # made every copy of the message meet "busy" until their attempts ran out.)
            with contextlib.suppress(Exception):  # not released: free again within one lease
                self._fenced(path, hold, _lease(timedelta(0)))
            raise
        acted = found is None
        done = {"state": "done", "result": result, "done_at": format_time(now())}
        if getattr(_DEFERRING, "on", False):
            _deferred().append((self, path, hold, done))  # committed with the run's next record (``deferring``)
        else:
            self._fenced(path, hold, done)
        return result, acted

    def _pending(self) -> list[tuple[str, _Hold, dict[str, Any]]]:
        """The done marks this thread deferred on this ledger (``deferring``)."""
        return [(path, hold, fields) for ledger, path, hold, fields in _deferred() if ledger is self]

    @contextlib.contextmanager
    def model_lock(self, model: str, name: str, lease: timedelta = LEASE, wait: float = 10.0) -> Iterator[None]:
        """Hold the model's lock ``name`` while the body runs (one holder at a time, its lease renewed while it
        runs, freed on exit or within a lease after a crash); Busy after ``wait`` seconds of another's hold.

        Promotions of one model take it: with the alias move and the champion's record inside, the next
        promotion sees the champion the last one recorded. Without it, the chaos storm's 51 runs of one model
        interleaved a crashed move, another run's move, and the recovery of the first, which moved the alias
        a second time and back to an older model.
        """
        path = f"{MODELS}/{model}/{LOCKS}/{name}"
        hold = _Hold(uuid.uuid4().hex)

        def take(snap: Snapshot) -> tuple[dict[str, Any] | None, bool]:
            doc = snap.data
            if doc and doc.get("holder") and not _lease_over(doc, snap.read_time):
                return None, False
            return {"holder": hold.holder, **_lease(lease)}, True

        deadline = time.monotonic() + wait
        while True:
            taken, committed = self._swap_timed(path, take)
            if taken and committed:
                hold.wrote(committed)
                break
            if time.monotonic() >= deadline:
                raise Busy(f"the {name} of model {model} is being carried out for another run")
            time.sleep(0.2)
        try:
            with self._heartbeat(path, hold, lease):
                yield
        finally:
            with contextlib.suppress(Exception):  # not released: free again within one lease
                self._fenced(path, hold, {"holder": "", **_lease(timedelta(0))})

    @contextlib.contextmanager
    def _heartbeat(self, path: str, hold: _Hold, lease: timedelta) -> Iterator[None]:
        """Renew the lease every quarter lease while the body runs (the server's time of each renewal), as long as
        ``hold`` still holds it: one write on the version the holder last wrote, a read only after a conflict."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(lease.total_seconds() / 4):
                try:
                    if not self._fenced(path, hold, _lease(lease)):
                        return
                except Exception:  # a missed beat is retried; the lease lasts three more
                    continue

        thread = threading.Thread(target=beat, name=f"lease-{path.rsplit('/', 1)[-1]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


#: Per thread: whether claims' done marks wait for the next record (``deferring``), and those waiting.
_DEFERRING = threading.local()


def _deferred() -> list[tuple[Ledger, str, _Hold, dict[str, Any]]]:
    waiting: list[tuple[Ledger, str, _Hold, dict[str, Any]]] | None = getattr(_DEFERRING, "waiting", None)
    if waiting is None:
        waiting = _DEFERRING.waiting = []
    return waiting


def _flush_deferred() -> None:
    """Write alone (fenced by their holders) the done marks this thread deferred."""
    waiting = _deferred()
    while waiting:
        ledger, path, hold, fields = waiting.pop(0)
        ledger._fenced(path, hold, fields)


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """While the body runs on this thread, a claim's done mark (``Ledger.once``) waits for the run's next
    ``Ledger.record`` and commits with it: one commit fewer per effect, and none between the act and its event. On
    exit, a mark no record took is written alone. ``runtime.dispatch`` runs every handler inside it.

    The claim's version is the mark's precondition, so the mark is as fenced as when written alone; after a
    conflict it is written alone (fenced by the holder) and the record goes on without it. Until then the claim
    reads as claimed, its lease running: a duplicate delivery waits for the mark, and one after a crash asks
    ``recover`` first, as after a crash between the act and the mark.
    """
    _DEFERRING.on = True
    try:
        yield
    finally:
        _DEFERRING.on = False
        _flush_deferred()


class _Hold:
    """A claim or lock as its holder knows it: the holder id (the fencing token) and the version it last wrote."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self._version: Any = None
        self._lock = threading.Lock()

    @property
    def version(self) -> Any:
        with self._lock:
            return self._version

    def wrote(self, committed: Committed) -> None:
        with self._lock:
            self._version = committed.versions[0]


def _lease(length: timedelta) -> dict[str, Any]:
    """The fields of a lease renewed now, by the server's clock: it lasts ``length`` from the write."""
    return {"beat_at": SERVER_TIME, "lease_seconds": length.total_seconds()}


def _lease_over(doc: Mapping[str, Any], read_time: datetime | None) -> bool:
    """Whether the lease in ``doc`` is over at the server's ``read_time`` (a claim written before leases were
    judged by the server's time holds ``lease_until`` only: compared with the same server time)."""
    if read_time is None:
        raise RetryableError("the document store returned no read time; a lease cannot be judged")
    beat = doc.get("beat_at")
    if isinstance(beat, datetime):
        return beat + timedelta(seconds=float(doc.get("lease_seconds") or 0)) <= read_time
    return str(doc.get("lease_until", "")) <= format_time(read_time)


def _claim_state(snap: Snapshot) -> str:
    """An effect claim as read: "done", "busy" (its lease runs, by the server's time of the read) or "expired"."""
    doc = snap.data or {}
    if doc.get("state") == "done":
        return "done"
    return "expired" if _lease_over(doc, snap.read_time) else "busy"


def _has_server_time(updates: Mapping[str, Any]) -> bool:
    return any(v is SERVER_TIME or (isinstance(v, Mapping) and _has_server_time(v)) for v in updates.values())


#: What only ``Context.conclude`` changes on a run (through ``Ledger.record``'s event, status and outbox): a stage's
#: fields never name them, so no stage ends, resumes or announces a run behind the runtime's back.
RUNTIME_FIELDS = frozenset({"status", "events", "outbox", PUBLISHED, "outbox_pending"})


def _only_facts(fields: Mapping[str, Any]) -> None:
    """ValueError when ``fields`` name a field the runtime owns (a defect in the caller, never data)."""
    owned = sorted({key.split(".", 1)[0] for key in fields} & RUNTIME_FIELDS)
    if owned:
        raise ValueError(f"{', '.join(owned)} change only through Context.conclude (the one writer of a run's status)")
