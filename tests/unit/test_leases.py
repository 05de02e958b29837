"""Leases are the server's: an instance whose clock is off neither takes over a live claim nor keeps a lease the
server says is over (the in-memory store's one clock stands in for Firestore's)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cd4ml import events
from cd4ml import ledger as ledger_module
from cd4ml.errors import Busy
from cd4ml.ledger import Ledger
from cd4ml.store import SERVER_TIME, MemoryStore

RUN = "digits-20300101t030000z"
HOUR = timedelta(hours=1)
TRUE_NOW = events.now


class ServerClock:
    """The store's clock: the machine's, moved forward by ``ahead`` (a test lets server time pass)."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


@pytest.fixture
def clock() -> ServerClock:
    return ServerClock()


@pytest.fixture
def store(clock: ServerClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@contextlib.contextmanager
def instance_clock(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> Iterator[None]:
    """While the body runs, the instance's own clock (the one the ledger reads) is ``offset`` off."""
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "now", lambda: TRUE_NOW() + offset)
        yield


def test_an_instance_whose_clock_runs_ahead_does_not_take_over_a_live_claim(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder, late = Ledger(store), Ledger(store)
    acts: list[str] = []

    def act() -> dict[str, Any]:
        acts.append("holder")
        with instance_clock(monkeypatch, +HOUR), pytest.raises(Busy):  # a duplicate delivery on a skewed instance
            late.once(RUN, "job", lambda: _acted(acts, "late"), wait=0.1)
        return {"job": "once"}

    assert holder.once(RUN, "job", act) == ({"job": "once"}, True)
    assert acts == ["holder"]


def test_a_holder_whose_clock_runs_behind_keeps_its_live_claim(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    behind, other = Ledger(store), Ledger(store)
    acts: list[str] = []

    def act() -> dict[str, Any]:
        acts.append("behind")
        # A duplicate on an instance with the right clock: the claim is live, whatever the holder's clock says.
        with instance_clock(monkeypatch, timedelta(0)), pytest.raises(Busy):
            other.once(RUN, "job", lambda: _acted(acts, "other"), wait=0.1)
        return {"job": "once"}

    with instance_clock(monkeypatch, -HOUR):
        assert behind.once(RUN, "job", act) == ({"job": "once"}, True)
    assert acts == ["behind"]


def test_a_claim_released_by_an_instance_whose_clock_runs_ahead_is_free_at_once(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead, other = Ledger(store), Ledger(store)

    def fails() -> dict[str, Any]:
        raise ConnectionError("the external system went away mid-call")

    with instance_clock(monkeypatch, +HOUR), pytest.raises(ConnectionError):
        ahead.once(RUN, "job", fails)
    # The release says "over now" by the server's clock, not "over in an hour" by the failed instance's.
    result = other.once(RUN, "job", lambda: {"job": "new"}, recover=lambda: {"job": "found"}, wait=0.1)
    assert result == ({"job": "found"}, False)


def test_a_dead_holders_claim_frees_when_the_servers_clock_says_so(
    store: MemoryStore, clock: ServerClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead, behind = Ledger(store), Ledger(store)
    frozen = threading.Event()

    @contextlib.contextmanager
    def no_heartbeat(*args: Any) -> Iterator[None]:
        yield

    def dies() -> dict[str, Any]:  # the instance freezes mid-act: no heartbeat, no release, no result
        frozen.set()
        raise SystemExit

    with instance_clock(monkeypatch, +HOUR), monkeypatch.context() as patch:
        patch.setattr(dead, "_heartbeat", no_heartbeat)
        patch.setattr(dead, "_fenced", lambda *a: False)
        with pytest.raises(SystemExit):
            dead.once(RUN, "job", dies)
    assert frozen.is_set()
    with instance_clock(monkeypatch, -HOUR), pytest.raises(Busy):  # the server says the lease still runs
        behind.once(RUN, "job", lambda: {"job": "new"}, wait=0.1)
    clock.ahead = ledger_module.LEASE + timedelta(seconds=1)  # one lease later by the server's clock
    with instance_clock(monkeypatch, -HOUR):
        assert behind.once(RUN, "job", lambda: {"job": "new"}, recover=lambda: None) == ({"job": "new"}, True)


def test_a_models_lock_is_not_taken_by_an_instance_whose_clock_runs_ahead(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    holder, late = Ledger(store), Ledger(store)
    with (
        holder.model_lock("digits", "promotion"),
        instance_clock(monkeypatch, +HOUR),
        pytest.raises(Busy),
        late.model_lock("digits", "promotion", wait=0.1),
    ):
        pass
    with instance_clock(monkeypatch, +HOUR), late.model_lock("digits", "promotion", wait=0.1):
        pass  # released by the server's time: free at once, whatever either clock says


def test_live_claims_are_judged_by_the_servers_clock(store: MemoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    book = Ledger(store)
    seen: list[list[str]] = []

    def act() -> dict[str, Any]:
        with instance_clock(monkeypatch, +HOUR):
            seen.append(book.live_claims(RUN))
        return {}

    book.once(RUN, "job", act)
    assert seen == [["job"]] and book.live_claims(RUN) == []


def test_the_memory_store_resolves_the_server_time_on_write_and_returns_read_times(
    store: MemoryStore, clock: ServerClock
) -> None:
    assert store.create("a/b", {"at": SERVER_TIME, "nested": {"at": SERVER_TIME}})
    clock.ahead = timedelta(minutes=5)
    snap = store.read("a/b")
    assert snap.data is not None and snap.read_time is not None
    assert snap.read_time - snap.data["at"] >= timedelta(minutes=5)
    assert snap.data["nested"]["at"] == snap.data["at"]
    assert store.read("a/missing").read_time is not None  # an absent document is read at a time too


def _acted(acts: list[str], who: str) -> dict[str, Any]:
    """An act that notes who carried it out."""
    acts.append(who)
    return {"job": who}
