"""JSON-line logging for Cloud Logging: one format for the functions and every local stand-in.

Each line carries ``severity``, ``message``, ``time`` (UTC), the logger, the component when one is set, and
every ``extra`` field (``stage``, ``run_id``, ``event_id``, …; a ``details`` mapping is merged in).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "details"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with Cloud Logging's ``severity`` and ``message`` keys."""

    def __init__(self, component: str = "") -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        }
        if self._component:
            entry["component"] = self._component
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_") and value is not None:
                entry[key] = value
        details = getattr(record, "details", None)
        if isinstance(details, dict):
            entry.update(details)
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)  # what Error Reporting reads
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO) -> None:
    """Send cd4ml's logs to stderr as JSON lines; idempotent."""
    root = logging.getLogger("cd4ml")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def get(name: str) -> logging.Logger:
    """A logger under the ``cd4ml`` namespace."""
    return logging.getLogger(f"cd4ml.{name}")
