"""A stage's decision as a value: the event to emit, the change to the run record, and why.

Every stage reads: parse the message → ``decide`` (pure, returns an Outcome) → act once (``ledger.once``)
→ ``Context.conclude`` (record the change, then publish the event). Deciding is separate from doing, so
each stage's rules are unit-tested with real Event and Run values and no emulator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cd4ml.events import RUN_FAILED


@dataclass(frozen=True)
class Outcome:
    """What follows from an event: ``emit`` (type, data) or nothing, ``record`` (dotted fields), ``error``."""

    emit: tuple[str, Mapping[str, Any]] | None = None
    record: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None  # the run's error when this outcome ends it failed
    note: str = ""  # the log line when nothing is emitted
    error_stage: str = ""  # the stage the error is recorded against, when not the concluding stage

    @classmethod
    def event(
        cls, type_: str, data: Mapping[str, Any], record: Mapping[str, Any] | None = None, error: str | None = None
    ) -> Outcome:
        return cls(emit=(type_, dict(data)), record=dict(record or {}), error=error)

    @classmethod
    def nothing(cls, note: str, record: Mapping[str, Any] | None = None) -> Outcome:
        """Nothing to announce: only ``note`` is logged, and ``record`` (progress facts) written if given."""
        return cls(record=dict(record or {}), note=note)

    @classmethod
    def run_failed(cls, model: str, stage: str, cause: str, reason: str) -> Outcome:
        """run.failed: an ending with no event of its own (gave up, dead letter, stale), announced like the rest."""
        reason = reason[:1024]
        data = {"model": model, "stage": stage, "cause": cause, "reason": reason}
        return cls(emit=(RUN_FAILED, data), error=reason, error_stage=stage)

    @property
    def type(self) -> str | None:
        return self.emit[0] if self.emit else None

    @property
    def data(self) -> Mapping[str, Any]:
        return self.emit[1] if self.emit else {}
