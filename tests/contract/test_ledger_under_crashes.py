"""The run ledger on the Firestore emulator when writers crash and race (found by ``nox -s chaos``).

A Firestore transaction locks what it read until it commits or expires; an instance SIGKILLed inside one left
its run locked for minutes (the emulator answered every other writer ``ABORTED: Transaction lock timeout``), and
the chaos storm's runs stalled behind such locks. The ledger now writes optimistically (read, compute, write with
the read's update time as precondition): a writer killed between its read and its write holds nothing.
Starts only the Firestore emulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from local_emulator import stack as local
from local_emulator.common import processes

from cd4ml import events, ledger
from cd4ml.events import Event, now
from cd4ml.store import FirestoreStore

FIRESTORE_EMULATOR = local.GCLOUD_PLATFORM / "cloud-firestore-emulator/cloud_firestore_emulator"
pytestmark = pytest.mark.skipif(not FIRESTORE_EMULATOR.exists(), reason="needs the gcloud Firestore emulator")
RUN = "digits-20300101t030000z"


@pytest.fixture(scope="module")
def firestore_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    argv = lambda port: [str(FIRESTORE_EMULATOR), "start", "--host=127.0.0.1", f"--port={port}"]  # noqa: E731
    with processes.serving("firestore", argv, tmp_path_factory.mktemp("firestore-logs")) as host:
        yield host


@pytest.fixture
def book(firestore_host: str, monkeypatch: pytest.MonkeyPatch) -> ledger.Ledger:
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_host)
    from google.cloud import firestore

    db = firestore.Client(project=f"ledger-{time.monotonic_ns()}")  # a project per test: a clean database
    book = ledger.Ledger.firestore(db)
    opened = _event(events.RUN_REQUESTED, "opened")
    book.open_run(RUN, model="digits", scheduled_time=now(), trigger="manual", manifest={}, event=opened)
    return book


def _event(type_: str, id: str) -> Event:
    """An event as the ledger records it (its payload is not the ledger's business)."""
    return Event(type=type_, subject=RUN, data={}, id=id, source="//test", time=now())


_CRASH_MID_RECORD = """
import os, signal, sys
from google.cloud import firestore
from cd4ml import ledger, transition

def crash(*args, **kwargs):  # after the ledger read the run, before it wrote: SIGKILL, as Cloud Run's crash does
    os.kill(os.getpid(), signal.SIGKILL)

ledger.apply = transition.apply = crash
book = ledger.Ledger.firestore(firestore.Client(project=sys.argv[1]))
book.record(sys.argv[2], fields={"crashed": True})
"""


def _db(book: ledger.Ledger) -> Any:
    """The Firestore client under the ledger (these tests write what a crashed writer leaves behind)."""
    store = book.store
    assert isinstance(store, FirestoreStore)
    return store.db


def test_a_writer_killed_mid_record_leaves_the_run_writable(book: ledger.Ledger) -> None:
    db: Any = _db(book)
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH_MID_RECORD, db.project, RUN],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(local.REPO), str(local.FUNCTIONS_DIR)])},
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == -9, crashed.stderr.decode()[-2000:]
    started = time.monotonic()
    record = book.record(RUN, _event(events.DATA_FETCHED, "next-delivery"))
    # With a transaction, the killed writer's lock made this wait (then fail "run ledger busy") for minutes.
    assert time.monotonic() - started < 10
    assert [e["type"] for e in record["events"]] == [events.RUN_REQUESTED, events.DATA_FETCHED]
    assert "crashed" not in record


def test_racing_writers_of_one_run_lose_no_event(book: ledger.Ledger) -> None:
    kinds = [events.DATA_FETCHED, events.TRAINING_SUBMITTED, events.TRAINING_COMPLETED, events.EVALUATION_PASSED]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            book.record(RUN, _event(kinds[n % len(kinds)], f"event-{n}"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    record = book.get(RUN) or {}
    assert sorted(e["id"] for e in record["events"][1:]) == sorted(f"event-{n}" for n in range(12))


def test_a_duplicate_claim_after_a_crash_is_taken_over_once(book: ledger.Ledger) -> None:
    """The claim of a delivery that died before recording its result: once its lease is over, exactly one of the
    racing redeliveries takes it over (asking the external system first), the others reuse that result."""
    from datetime import timedelta

    ref: Any = _db(book).collection("runs").document(RUN).collection("effects").document("job")
    ref.create({"state": "claimed", "lease_until": "2000-01-01T00:00:00.000Z", "attempts": 1})
    recovered: list[int] = []
    results: list[tuple[dict[str, Any], bool]] = []

    def redeliver(n: int) -> None:
        def recover() -> dict[str, Any] | None:
            recovered.append(n)
            return {"job": "found"}

        results.append(book.once(RUN, "job", lambda: {"job": f"new-{n}"}, recover, lease=timedelta(seconds=30)))

    threads = [threading.Thread(target=redeliver, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(recovered) == 1
    assert [r for r, _ in results] == [{"job": "found"}] * 4
    assert (ref.get().to_dict() or {})["attempts"] == 2


class _Bus:
    def __init__(self) -> None:
        self.published: list[Event] = []
        self.fail = False

    def publish(self, event: Event) -> None:
        if self.fail:
            raise RuntimeError("the instance died before the publish")
        self.published.append(event)


def _context(book: ledger.Ledger, bus: _Bus) -> Any:
    from cd4ml.runtime import Context
    from cd4ml.settings import Settings

    ctx = Context(Settings.from_env({"CD4ML_PROJECT": "p", "CD4ML_STAGE": "evaluate"}))
    ctx.__dict__.update(ledger=book, bus=bus)  # the cached clients, as the stage would build them
    return ctx


def test_an_event_is_published_once_whatever_the_duplicates(book: ledger.Ledger) -> None:
    # Found by the chaos session: every duplicate delivery re-published its stage's event, so one request became
    # 3 messages, then 9, then 27 deliveries down the chain under triple delivery.
    from cd4ml.outcome import Outcome

    skipped = Outcome.event(
        events.RUN_SKIPPED,
        {"model": "digits", "champion_run_id": RUN, "model_sha256": "0" * 64, "reason": "same model"},
    )
    bus = _Bus()
    bus.fail = True  # the first delivery records the event and dies before publishing it
    with pytest.raises(RuntimeError):
        _context(book, bus).conclude(RUN, skipped)
    assert bus.published == []
    bus.fail = False
    for _ in range(3):  # the redelivery publishes it; the duplicates publish nothing more
        _context(book, bus).conclude(RUN, skipped)
    [published] = bus.published
    record = book.get(RUN) or {}
    assert record["published"] == [published.id]
    assert [e["id"] for e in record["events"]].count(published.id) == 1


def test_a_recovery_that_fails_releases_the_claim(book: ledger.Ledger) -> None:
    # Found by the chaos session: Gate down while a redelivery asked it for the webhook's execution; the claim
    # kept the takeover's lease, so every other delivery was told "busy" for 90 s and ran out of attempts.
    from datetime import timedelta

    ref: Any = _db(book).collection("runs").document(RUN).collection("effects").document("canary-webhook")
    ref.create({"state": "claimed", "lease_until": "2000-01-01T00:00:00.000Z", "attempts": 1})

    def gate_down() -> dict[str, Any] | None:
        raise RuntimeError("Spinnaker Gate unreachable (HTTP 503)")

    with pytest.raises(RuntimeError):
        book.once(RUN, "canary-webhook", lambda: {"execution": "new"}, gate_down, lease=timedelta(seconds=90))
    result, acted = book.once(RUN, "canary-webhook", lambda: {"execution": "new"}, lambda: None)
    assert (result, acted) == ({"execution": "new"}, True)  # taken over at once, not 90 s later


def test_an_event_recorded_by_a_dead_delivery_is_published_from_the_outbox(book: ledger.Ledger) -> None:
    # Found by the chaos session: watch_canary recorded canary.succeeded (the run no longer "in flight") and died
    # before publishing it; no tick looked at the run again, so promote never ran. The tick now flushes the
    # stage's outbox: events recorded and never published.
    from cd4ml.outcome import Outcome

    skipped = Outcome.event(
        events.RUN_SKIPPED,
        {"model": "digits", "champion_run_id": RUN, "model_sha256": "0" * 64, "reason": "same model"},
    )
    bus = _Bus()
    bus.fail = True
    with pytest.raises(RuntimeError):
        _context(book, bus).conclude(RUN, skipped)
    record = book.get(RUN) or {}
    [waiting] = record["outbox"]
    assert record["outbox_pending"] is True and waiting["type"] == events.RUN_SKIPPED
    bus.fail = False
    assert _context(book, bus).flush_outbox(older_than_seconds=3600) == 0  # too recent: its delivery may live
    assert _context(book, bus).flush_outbox(older_than_seconds=-1) == 1
    assert _context(book, bus).flush_outbox(older_than_seconds=-1) == 0
    [published] = bus.published
    assert (published.id, published.type, dict(published.data)) == (waiting["id"], events.RUN_SKIPPED, waiting["data"])
    record = book.get(RUN) or {}
    assert record["outbox"] == [] and record["outbox_pending"] is False and record["published"] == [published.id]


def test_a_slow_act_keeps_its_claim_and_a_dead_holder_frees_it_within_a_lease(book: ledger.Ledger) -> None:
    # Found by the chaos storm under load: an act that outlived its fixed lease was taken over and done twice; a
    # long fixed lease outlived the emulator's retry budget after a crash. The lease is short and renewed.
    from datetime import timedelta

    from cd4ml.errors import Busy

    lease = timedelta(seconds=2)
    started, done = threading.Event(), threading.Event()
    acts: list[str] = []

    def slow() -> dict[str, Any]:
        acts.append("slow")
        started.set()
        time.sleep(5)  # 2.5 leases
        return {"job": "slow"}

    def hold() -> None:
        book.once(RUN, "slow", slow, lease=lease)
        done.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert started.wait(30)
    time.sleep(3)  # past the first lease: renewed
    with pytest.raises(Busy):
        book.once(RUN, "slow", lambda: {"job": "twice"}, lease=lease, wait=0.5)
    holder.join()
    assert done.is_set() and acts == ["slow"]
    assert book.once(RUN, "slow", lambda: {"job": "twice"}, lease=lease) == ({"job": "slow"}, False)

    # A holder that died: its claim (no heartbeat any more) is taken over once its lease is over.
    ref: Any = _db(book).collection("runs").document(RUN).collection("effects").document("dead")
    ref.create({"state": "claimed", "lease_until": events.format_time(now() + lease), "attempts": 1, "holder": "x"})
    with pytest.raises(Busy):
        book.once(RUN, "dead", lambda: {"job": "new"}, lease=lease, wait=0.1)
    time.sleep(2.5)
    assert book.once(RUN, "dead", lambda: {"job": "new"}, lambda: None, lease=lease) == ({"job": "new"}, True)


def test_a_models_lock_has_one_holder_and_a_dead_holders_lock_frees_itself(book: ledger.Ledger) -> None:
    # Found by the chaos storm (51 runs of one model): promotions interleaved and one moved the alias twice.
    from datetime import timedelta

    from cd4ml.errors import Busy

    lease = timedelta(seconds=2)
    with book.model_lock("digits", "promotion", lease=lease):
        with pytest.raises(Busy), book.model_lock("digits", "promotion", lease=lease, wait=0.5):
            pass
        with book.model_lock("other", "promotion", lease=lease):  # another model's promotions are not held up
            pass
        time.sleep(3)  # renewed while held
        with pytest.raises(Busy), book.model_lock("digits", "promotion", lease=lease, wait=0.2):
            pass
    with book.model_lock("digits", "promotion", lease=lease, wait=0.5):  # released on exit
        pass
    # A holder that died (no heartbeat, no release): free once its lease is over.
    ref: Any = _db(book).collection("models").document("digits").collection("locks").document("promotion")
    ref.set({"holder": "dead", "lease_until": events.format_time(now() + lease)})
    started = time.monotonic()
    with book.model_lock("digits", "promotion", lease=lease, wait=10):
        assert time.monotonic() - started < 5
