"""A stage's decision as a value: the event to emit, the change to the run record, and why.

Every stage reads: parse the message → ``decide`` (pure, returns an Outcome) → act once (``ledger.once``)
→ ``Context.conclude`` (record the change, then publish the event). Deciding is separate from doing, so
each stage's rules are unit-tested with real Event and Run values and no emulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """What follows from an event: ``emit`` (type, data) or nothing, ``record`` (dotted fields), ``error``."""

    emit: tuple[str, Mapping[str, Any]] | None = None
    record: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None  # the run's error when this outcome ends it failed
    note: str = ""  # the log line when nothing is emitted

    @classmethod
    def event(
        cls, type_: str, data: Mapping[str, Any], record: Mapping[str, Any] | None = None, error: str | None = None
    ) -> Outcome:
        return cls(emit=(type_, dict(data)), record=dict(record or {}), error=error)

    @classmethod
    def nothing(cls, note: str, record: Mapping[str, Any] | None = None) -> Outcome:
        """Nothing to announce: only ``note`` is logged, and ``record`` (progress facts) written if given."""
        return cls(record=dict(record or {}), note=note)

    @property
    def type(self) -> str | None:
        return self.emit[0] if self.emit else None

    @property
    def data(self) -> Mapping[str, Any]:
        return self.emit[1] if self.emit else {}
