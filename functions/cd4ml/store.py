"""The document store under the run ledger: the few generic operations the ledger's rules need.

Two implementations keep one meaning: ``FirestoreStore`` (production, and the local stack's emulator) and
``MemoryStore`` (unit tests: every stage handler runs against it with no process). Paths are slash-separated
document paths (``runs/RUN``, ``runs/RUN/effects/NAME``). Field paths in ``update`` are dotted and mean what
Firestore's ``update()`` means: ``{"a.b": 1}`` sets one nested field, ``{"a": {...}}`` replaces the whole map.
``set_merge`` merges maps field by field, as Firestore's ``set(..., merge=True)``.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from google.cloud import firestore

#: A comparison of one field in a query: (dotted field path, operator, value).
Filter = tuple[str, Literal["==", "<", ">", "<=", ">="], Any]


class Missing(LookupError):
    """The document to update does not exist."""


@dataclass(frozen=True)
class Snapshot:
    """A document as read: its fields (None when absent) and an opaque version for an optimistic write."""

    data: dict[str, Any] | None
    version: Any = None

    @property
    def exists(self) -> bool:
        return self.data is not None


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

    def commit(self, writes: Sequence[Write]) -> bool:
        """Apply every write or none; False when a precondition failed (someone wrote since the read)."""
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
    """The store in a dict, with Firestore's write semantics and atomic commits (unit tests; no process)."""

    def __init__(self) -> None:
        self._docs: dict[str, tuple[dict[str, Any], int]] = {}
        self._lock = threading.Lock()
        self._clock = 0
        #: Reads and writes made, as production bills them (the benchmark and tests read them).
        self.reads = 0
        self.writes = 0

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def read(self, path: str) -> Snapshot:
        with self._lock:
            self.reads += 1
            found = self._docs.get(path)
            return Snapshot(None) if found is None else Snapshot(copy.deepcopy(found[0]), found[1])

    def create(self, path: str, data: Mapping[str, Any]) -> bool:
        with self._lock:
            if path in self._docs:
                return False
            self.writes += 1
            self._docs[path] = (copy.deepcopy(dict(data)), self._tick())
            return True

    def commit(self, writes: Sequence[Write]) -> bool:
        with self._lock:
            for w in writes:
                current = self._docs.get(w.path)
                if w.kind == "create" and current is not None:
                    return False
                if w.kind == "update" and (current is None or current[1] != w.version):
                    return False
            for w in writes:
                current_doc = self._docs.get(w.path, ({}, 0))[0]
                if w.kind == "create":
                    new = copy.deepcopy(dict(w.data))
                elif w.kind == "update":
                    new = with_updates(current_doc, w.data)
                else:
                    new = merged(current_doc, w.data)
                self.writes += 1
                self._docs[w.path] = (new, self._tick())
            return True

    def update(self, path: str, fields: Mapping[str, Any]) -> None:
        with self._lock:
            current = self._docs.get(path)
            if current is None:
                raise Missing(path)
            self.writes += 1
            self._docs[path] = (with_updates(current[0], fields), self._tick())

    def increment(self, path: str, counter: str, fields: Mapping[str, Any]) -> int:
        with self._lock:
            doc = copy.deepcopy(self._docs.get(path, ({}, 0))[0])
            doc[counter] = int(doc.get(counter) or 0) + 1
            doc.update(copy.deepcopy(dict(fields)))
            self.writes += 1
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
            self.reads += max(1, len(docs[:limit]))
            return docs[:limit]

    def ids(self, collection: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            children = self._children(collection)
            self.reads += max(1, len(children))
            return children


class FirestoreStore:
    """The store on a Firestore client (native mode; the emulator locally)."""

    def __init__(self, db: firestore.Client) -> None:
        self.db = db

    def _ref(self, path: str) -> Any:
        return self.db.document(path)

    def read(self, path: str) -> Snapshot:
        snap = self._ref(path).get()
        return Snapshot(snap.to_dict() or {}, snap.update_time) if snap.exists else Snapshot(None)

    def create(self, path: str, data: Mapping[str, Any]) -> bool:
        from google.api_core.exceptions import AlreadyExists

        try:
            self._ref(path).create(dict(data))
        except AlreadyExists:
            return False
        return True

    def commit(self, writes: Sequence[Write]) -> bool:
        from google.api_core.exceptions import Aborted, AlreadyExists, FailedPrecondition

        batch = self.db.batch()
        for w in writes:
            ref = self._ref(w.path)
            if w.kind == "create":
                batch.create(ref, dict(w.data))
            elif w.kind == "update":
                batch.update(ref, dict(w.data), option=self.db.write_option(last_update_time=w.version))
            else:
                batch.set(ref, dict(w.data), merge=True)
        try:
            batch.commit()
        except (FailedPrecondition, AlreadyExists, Aborted):
            return False
        return True

    def update(self, path: str, fields: Mapping[str, Any]) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._ref(path).update(dict(fields))
        except NotFound as error:
            raise Missing(path) from error

    def increment(self, path: str, counter: str, fields: Mapping[str, Any]) -> int:
        from google.cloud import firestore

        ref = self._ref(path)
        ref.set({counter: firestore.Increment(1), **fields}, merge=True)
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
