"""The document store under the run ledger: the few generic operations the ledger's rules need.

Two implementations keep one meaning: ``FirestoreStore`` (production, and the local stack's emulator) and
``MemoryStore`` (unit tests: every stage handler runs against it with no process). Paths are slash-separated
document paths (``runs/RUN``, ``runs/RUN/effects/NAME``). Field paths in ``update`` are dotted and mean what
Firestore's ``update()`` means: ``{"a.b": 1}`` sets one nested field, ``{"a": {...}}`` replaces the whole map.
``set_merge`` merges maps field by field, as Firestore's ``set(..., merge=True)``.

Time is the server's: a write may hold ``SERVER_TIME`` (Firestore's ``SERVER_TIMESTAMP``, the REQUEST_TIME transform:
"the time at which the server processed the request, with millisecond precision", google/firestore/v1 write.proto),
and every read returns the server's time of the read (``Snapshot.read_time``: "the time at which a particular state
was observed", google/firestore/v1 firestore.proto). Leases are judged by those two alone, never by an instance's
clock, so instances whose clocks disagree agree on who holds one. On the emulator (measured here) the timestamp is
at or before the write's own update_time, and a later read's read_time is after both. ``MemoryStore``'s single
clock stands in for the server's.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from google.cloud import firestore

#: A comparison of one field in a query: (dotted field path, operator, value).
Filter = tuple[str, Literal["==", "<", ">", "<=", ">="], Any]


class Missing(LookupError):
    """The document to update does not exist."""


class _ServerTime:
    """The type of ``SERVER_TIME``."""

    def __repr__(self) -> str:
        return "SERVER_TIME"


#: A field value meaning "the server's time when it applies this write" (Firestore's ``SERVER_TIMESTAMP``); it
#: reads back as a timezone-aware datetime.
SERVER_TIME: Any = _ServerTime()


@dataclass(frozen=True)
class Snapshot:
    """A document as read: its fields (None when absent), an opaque version for an optimistic write, and the
    server's time of the read (what a lease is judged against)."""

    data: dict[str, Any] | None
    version: Any = None
    read_time: datetime | None = None

    @property
    def exists(self) -> bool:
        return self.data is not None


@dataclass(frozen=True)
class Committed:
    """An applied commit: each write's new version (in order; the precondition of a later write without a read)."""

    versions: tuple[Any, ...]


@dataclass(frozen=True)
class Write:
    """One write of an atomic commit: ``update`` (the read ``version`` as precondition), ``create`` (absent as
    precondition) or ``merge`` (no precondition, maps merged field by field)."""

    kind: Literal["update", "create", "merge"]
    path: str
    data: Mapping[str, Any] = field(default_factory=dict)
    version: Any = None


class Store(Protocol):
    """Generic document operations; the ledger's rules (claims, leases, status) are written once over them."""

    def read(self, path: str) -> Snapshot: ...

    def create(self, path: str, data: Mapping[str, Any]) -> bool:
        """Create the document if absent; False when it exists (nothing written)."""
        ...

    def commit(self, writes: Sequence[Write]) -> Committed | None:
        """Apply every write or none; None when a precondition failed (someone wrote since the read)."""
        ...

    def update(self, path: str, fields: Mapping[str, Any]) -> None:
        """Set dotted fields of an existing document without a precondition; Missing when it does not exist."""
        ...

    def increment(self, path: str, counter: str, fields: Mapping[str, Any]) -> int:
        """Add one to ``counter`` (creating the document) and set ``fields``; returns the count after."""
        ...

    def query(
        self,
        collection: str,
        where: Sequence[Filter] = (),
        order_by: str = "",
        descending: bool = False,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Documents of ``collection`` (a path; a subcollection too) matching every filter, in order."""
        ...

    def ids(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        """Every document of ``collection`` with its id."""
        ...


def get_path(doc: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted field path, or None."""
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def resolved(value: Any, moment: datetime) -> Any:
    """``value`` with every ``SERVER_TIME`` in it set to ``moment`` (what the server does when it applies a write)."""
    if value is SERVER_TIME:
        return moment
    if isinstance(value, Mapping):
        return {k: resolved(v, moment) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v, moment) for v in value]
    return copy.deepcopy(value)


def with_updates(doc: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` after Firestore's ``update(fields)``: each dotted path set, a whole map replaced, never deep-merged."""
    out = copy.deepcopy(dict(doc))
    for dotted, value in fields.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = copy.deepcopy(value)
    return out


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` after Firestore's ``set(changes, merge=True)``: maps merged field by field."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_OPS: dict[str, Any] = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a is not None and a < b,
    ">": lambda a, b: a is not None and a > b,
    "<=": lambda a, b: a is not None and a <= b,
    ">=": lambda a, b: a is not None and a >= b,
}


class MemoryStore:
    """The store in a dict, with Firestore's write semantics and atomic commits (unit tests; no process).

    Its ``clock`` (the machine's UTC time unless given) is the server's: ``SERVER_TIME`` resolves to it when a write
    is applied and every read returns it as ``read_time``, so an instance whose own clock is off (a test moving
    ``cd4ml.events.now``) sees the same leases as every other.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._docs: dict[str, tuple[dict[str, Any], int]] = {}
        self._lock = threading.Lock()
        self._version = 0
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))

    def _tick(self) -> int:
        self._version += 1
        return self._version

    def read(self, path: str) -> Snapshot:
        with self._lock:
            found = self._docs.get(path)
            moment = self.clock()
            return (
                Snapshot(None, None, moment) if found is None else Snapshot(copy.deepcopy(found[0]), found[1], moment)
            )

    def create(self, path: str, data: Mapping[str, Any]) -> bool:
        with self._lock:
            if path in self._docs:
                return False
            self._docs[path] = (resolved(dict(data), self.clock()), self._tick())
            return True

    def commit(self, writes: Sequence[Write]) -> Committed | None:
        with self._lock:
            for w in writes:
                current = self._docs.get(w.path)
                if w.kind == "create" and current is not None:
                    return None
                if w.kind == "update" and (current is None or current[1] != w.version):
                    return None
            moment = self.clock()
            versions = []
            for w in writes:
                current_doc = self._docs.get(w.path, ({}, 0))[0]
                data = resolved(dict(w.data), moment)
                if w.kind == "create":
                    new = data
                elif w.kind == "update":
                    new = with_updates(current_doc, data)
                else:
                    new = merged(current_doc, data)
                versions.append(self._tick())
                self._docs[w.path] = (new, versions[-1])
            return Committed(tuple(versions))

    def update(self, path: str, fields: Mapping[str, Any]) -> None:
        with self._lock:
            current = self._docs.get(path)
            if current is None:
                raise Missing(path)
            self._docs[path] = (with_updates(current[0], resolved(dict(fields), self.clock())), self._tick())

    def increment(self, path: str, counter: str, fields: Mapping[str, Any]) -> int:
        with self._lock:
            doc = copy.deepcopy(self._docs.get(path, ({}, 0))[0])
            doc[counter] = int(doc.get(counter) or 0) + 1
            doc.update(resolved(dict(fields), self.clock()))
            self._docs[path] = (doc, self._tick())
            return int(doc[counter])

    def _children(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        depth = collection.count("/") + 1
        prefix = collection + "/"
        return sorted(
            (path.rsplit("/", 1)[1], copy.deepcopy(doc))
            for path, (doc, _) in self._docs.items()
            if path.startswith(prefix) and path.count("/") == depth
        )

    def query(
        self,
        collection: str,
        where: Sequence[Filter] = (),
        order_by: str = "",
        descending: bool = False,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        with self._lock:
            docs = [
                doc
                for _, doc in self._children(collection)
                if all(_OPS[op](get_path(doc, name), value) for name, op, value in where)
            ]
            if order_by:  # Firestore leaves out documents without the ordered field
                docs = [d for d in docs if get_path(d, order_by) is not None]
                docs.sort(key=lambda d: get_path(d, order_by), reverse=descending)
            return docs[:limit]

    def ids(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return self._children(collection)


@dataclass
class Operations:
    """Firestore operations as production bills them: documents read (a query: those it returns, at least one),
    documents written, and the commits (round trips that write) they took."""

    reads: int = 0
    writes: int = 0
    commits: int = 0

    def __sub__(self, other: Operations) -> Operations:
        return Operations(self.reads - other.reads, self.writes - other.writes, self.commits - other.commits)


class Counting:
    """A store that counts the operations made through it (the benchmark's and the unit tests' meter): in all
    (``total``) and by the calling thread (``mine``: one handler's, as a request is served on one thread)."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self._total = Operations()
        self._lock = threading.Lock()
        self._local = threading.local()

    def _count(self, reads: int = 0, writes: int = 0, commits: int = 0) -> None:
        mine = self._mine()
        with self._lock:
            for tally in (self._total, mine):
                tally.reads += reads
                tally.writes += writes
                tally.commits += commits

    def _mine(self) -> Operations:
        tally: Operations | None = getattr(self._local, "tally", None)
        if tally is None:
            tally = self._local.tally = Operations()
        return tally

    def total(self) -> Operations:
        """The counts so far, every thread's (a copy: subtract two to count what happened between)."""
        with self._lock:
            return Operations(self._total.reads, self._total.writes, self._total.commits)

    def mine(self) -> Operations:
        """The counts so far of the calling thread (a copy)."""
        tally = self._mine()
        with self._lock:
            return Operations(tally.reads, tally.writes, tally.commits)

    def read(self, path: str) -> Snapshot:
        self._count(reads=1)
        return self.inner.read(path)

    def create(self, path: str, data: Mapping[str, Any]) -> bool:
        created = self.inner.create(path, data)
        self._count(writes=int(created), commits=1)
        return created

    def commit(self, writes: Sequence[Write]) -> Committed | None:
        done = self.inner.commit(writes)
        self._count(writes=len(writes) if done is not None else 0, commits=1)
        return done

    def update(self, path: str, fields: Mapping[str, Any]) -> None:
        self._count(writes=1, commits=1)
        self.inner.update(path, fields)

    def increment(self, path: str, counter: str, fields: Mapping[str, Any]) -> int:
        count = self.inner.increment(path, counter, fields)
        self._count(reads=int(isinstance(self.inner, FirestoreStore)), writes=1, commits=1)
        return count

    def query(
        self,
        collection: str,
        where: Sequence[Filter] = (),
        order_by: str = "",
        descending: bool = False,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        docs = self.inner.query(collection, where, order_by=order_by, descending=descending, limit=limit)
        self._count(reads=max(1, len(docs)))
        return docs

    def ids(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        found = self.inner.ids(collection)
        self._count(reads=max(1, len(found)))
        return found


class FirestoreStore:
    """The store on a Firestore client (native mode; the emulator locally)."""

    def __init__(self, db: firestore.Client) -> None:
        self.db = db

    def _ref(self, path: str) -> Any:
        return self.db.document(path)

    def read(self, path: str) -> Snapshot:
        snap = self._ref(path).get()
        data = (snap.to_dict() or {}) if snap.exists else None
        return Snapshot(data, snap.update_time if snap.exists else None, snap.read_time)

    def create(self, path: str, data: Mapping[str, Any]) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._ref(path).create(_server_times(data))
        except AlreadyExists:
            return False
        return True

    def commit(self, writes: Sequence[Write]) -> Committed | None:
        from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition, NotFound

        batch = self.db.batch()
        for w in writes:
            ref = self._ref(w.path)
            data = _server_times(w.data)
            if w.kind == "create":
                batch.create(ref, data)
            elif w.kind == "update":
                batch.update(ref, data, option=self.db.write_option(last_update_time=w.version))
            else:
                batch.set(ref, data, merge=True)
        try:
            results = batch.commit()
        except (FailedPrecondition, AlreadyExists, Aborted, NotFound):
            return None
        # A write result's update_time is the document's new version (its last_update_time precondition next).
        return Committed(tuple(r.update_time for r in results))

    def update(self, path: str, fields: Mapping[str, Any]) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._ref(path).update(_server_times(fields))
        except NotFound as error:
            raise Missing(path) from error

    def increment(self, path: str, counter: str, fields: Mapping[str, Any]) -> int:
        from google.cloud import firestore

        ref = self._ref(path)
        ref.set({counter: firestore.Increment(1), **_server_times(fields)}, merge=True)
        return int((ref.get().to_dict() or {}).get(counter, 1))

    def query(
        self,
        collection: str,
        where: Sequence[Filter] = (),
        order_by: str = "",
        descending: bool = False,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        from google.cloud import firestore

        query: Any = self.db.collection(collection)
        for name, op, value in where:
            query = query.where(filter=firestore.FieldFilter(name, op, value))
        if order_by:
            direction = firestore.Query.DESCENDING if descending else firestore.Query.ASCENDING
            query = query.order_by(order_by, direction=direction)
        return [d.to_dict() or {} for d in query.limit(limit).stream()]

    def ids(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        return [(d.id, d.to_dict() or {}) for d in self.db.collection(collection).stream()]


def _server_times(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``SERVER_TIME`` as Firestore's ``SERVER_TIMESTAMP`` sentinel (a top-level or nested field)."""
    from google.cloud import firestore

    def convert(value: Any) -> Any:
        if value is SERVER_TIME:
            return firestore.SERVER_TIMESTAMP
        if isinstance(value, Mapping):
            return {k: convert(v) for k, v in value.items()}
        return value

    return {k: convert(v) for k, v in data.items()}
