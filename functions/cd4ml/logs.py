"""JSON-line logging for Cloud Logging: severity, message, stage, run id and event id on every line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_FIELDS = ("stage", "run_id", "event_id", "event_type", "model")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        extra = getattr(record, "details", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: int = logging.INFO) -> None:
    """Send cd4ml's logs to stderr as JSON lines; idempotent."""
    root = logging.getLogger("cd4ml")
    if any(isinstance(h.formatter, _JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def get(name: str) -> logging.Logger:
    """A logger under the ``cd4ml`` namespace."""
    return logging.getLogger(f"cd4ml.{name}")
