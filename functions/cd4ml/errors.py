"""The two error families of cd4ml: retryable (raise, Pub/Sub redelivers) and permanent (record, dead-letter)."""

from __future__ import annotations

from collections.abc import Sequence


class Cd4mlError(Exception):
    """Base of every error cd4ml raises on purpose."""


class RetryableError(Cd4mlError, RuntimeError):
    """A transient failure: the handler raises it and Pub/Sub delivers the message again."""


class Busy(RetryableError):
    """Another delivery holds the effect's claim and is carrying it out: not a failure of this message, so it never
    counts towards giving the run up (``runtime.dispatch``); Pub/Sub redelivers it, and dead-letters it when its
    attempts run out, for ``on_dead_letter`` to decide once the holder's lease is over."""


class PermanentError(Cd4mlError, ValueError):
    """A failure that no retry can fix: logged once, recorded on the run, message dead-lettered.

    ``problems`` lists every problem found, so one error names all of them at once.
    """

    def __init__(self, summary: str, problems: Sequence[str] = (), *, run_id: str | None = None) -> None:
        self.summary = summary
        self.problems = tuple(problems)
        self.run_id = run_id
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The summary followed by every problem, on one line."""
        if not self.problems:
            return self.summary
        return f"{self.summary}: " + "; ".join(self.problems)


class InvalidEvent(PermanentError):
    """A message that is not a valid cd4ml event of the expected type."""


class InvalidManifest(PermanentError):
    """A model manifest that does not follow schemas/manifest.schema.json."""


class UnknownModel(PermanentError):
    """A run was requested for a model that has no manifest."""


class DeadLetterRefused(Cd4mlError, ValueError):
    """Pub/Sub refused the dead-letter copy of a message (a limit): the request is answered 4xx naming it."""


class InvalidSettings(Cd4mlError, ValueError):
    """The process environment lacks or misstates a setting: the process cannot start."""
