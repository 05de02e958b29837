"""What every local stand-in process shares: JSON-line logs, stop on SIGTERM, child process groups, publishing."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


def configure_logging(component: str, level: int = logging.INFO) -> logging.Logger:
    """Send this process's logs to stderr as JSON lines and return the component's logger."""
    handler = logging.StreamHandler(sys.stderr)
    from cd4ml.logs import JsonFormatter  # deferred: the noxfile imports this package before cd4ml is installed

    handler.setFormatter(JsonFormatter(component))  # the functions' format: one log format for the whole stack
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("google", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(component)


def stop_event_on_signals() -> threading.Event:
    """Return an event set by SIGTERM or SIGINT; call from the main thread."""
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def require_env(name: str, log: logging.Logger) -> str:
    """Return an emulator variable or exit: without it a client would talk to real Google Cloud."""
    value = os.environ.get(name, "")
    if not value:
        log.error("environment variable missing; refusing to reach real Google Cloud", extra={"variable": name})
        raise SystemExit(2)
    return value


def kill_process_group(proc: subprocess.Popen[Any], grace_seconds: float = 5.0) -> None:
    """Stop a child started with start_new_session=True and its whole group (``processes.stop``), and reap it."""
    from local_emulator.common import processes

    # A leader that already exited may have left processes in its group: those get no grace.
    processes.stop(proc.pid, timeout=grace_seconds if proc.poll() is None else 0.0)
    proc.poll()


@dataclass(frozen=True)
class CommandResult:
    """What a finished child command left: exit code, merged output, and whether it was killed."""

    argv: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    timed_out: bool = False
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.cancelled

    def tail(self, lines: int = 8) -> str:
        """The last lines of output, for a failure's one-line reason."""
        kept = [line for line in self.output.strip().splitlines() if line.strip()]
        return " | ".join(kept[-lines:])


class ChildGroups:
    """Run commands each in its own process group, so that shutdown or cancel can end them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, subprocess.Popen[str]]] = {}
        self._cancelled: set[str] = set()
        self._closed = False

    def run(
        self,
        argv: Sequence[str],
        *,
        owner: str,
        timeout: float,
        log_file: IO[str] | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv to completion (or timeout/cancel), copying its output to log_file."""
        started = time.monotonic()
        if log_file is not None:
            log_file.write(f"$ {' '.join(argv)}\n")
            log_file.flush()
        with self._lock:
            if self._closed or owner in self._cancelled:
                return CommandResult(tuple(argv), -1, "", 0.0, cancelled=True)
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                cwd=cwd,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
            self._running[proc.pid] = (owner, proc)
        timed_out = False
        try:
            output, _ = proc.communicate(timeout=max(timeout, 0.001))
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_process_group(proc, grace_seconds=2.0)
            output, _ = proc.communicate()
        finally:
            with self._lock:
                self._running.pop(proc.pid, None)
                cancelled = owner in self._cancelled or self._closed
        if log_file is not None:
            log_file.write(output)
            log_file.flush()
        return CommandResult(
            tuple(argv),
            proc.returncode,
            output,
            time.monotonic() - started,
            timed_out=timed_out,
            cancelled=cancelled and proc.returncode != 0,
        )

    def cancel(self, owner: str) -> None:
        """End every running command of one owner (a build) and refuse its next ones."""
        with self._lock:
            self._cancelled.add(owner)
            victims = [proc for own, proc in self._running.values() if own == owner]
        for proc in victims:
            kill_process_group(proc, grace_seconds=2.0)

    def close(self) -> None:
        """End every running command; used on SIGTERM."""
        with self._lock:
            self._closed = True
            victims = [proc for _, proc in self._running.values()]
        for proc in victims:
            kill_process_group(proc, grace_seconds=2.0)


@contextmanager
def atomic_write(path: Path) -> Iterator[IO[str]]:
    """Write a file whole or not at all (readers never see half a JSON document)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        yield handle
    os.replace(tmp, path)


class TopicPublisher:
    """Publishes to one Pub/Sub topic (the emulator, through PUBSUB_EMULATOR_HOST), one message per batch."""

    def __init__(self, project: str, topic: str) -> None:
        # deferred: a 0.4 s import that only the servers that publish pay
        from google.cloud.pubsub_v1 import PublisherClient
        from google.cloud.pubsub_v1.types import BatchSettings

        self._client = PublisherClient(batch_settings=BatchSettings(max_messages=1))
        self.topic_path: str = self._client.topic_path(project, topic)

    def publish(self, data: bytes, attributes: Mapping[str, str], timeout: float = 10.0) -> str:
        """Publish and wait for the message id; raises if the emulator refuses (e.g. missing topic)."""
        future = self._client.publish(self.topic_path, data, **dict(attributes))
        return str(future.result(timeout=timeout))

    def close(self) -> None:
        self._client.stop()


@dataclass(frozen=True)
class _Outgoing:
    data: bytes
    attributes: Mapping[str, str]


class OrderedPublisher:
    """Publishes in submission order from one background thread, retrying a few times, never blocking callers."""

    def __init__(self, publisher: TopicPublisher, log: logging.Logger, attempts: int = 5) -> None:
        self._publisher = publisher
        self._log = log
        self._attempts = attempts
        self._queue: queue.Queue[_Outgoing | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def submit(self, data: bytes, attributes: Mapping[str, str]) -> None:
        self._queue.put(_Outgoing(data, dict(attributes)))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            for attempt in range(1, self._attempts + 1):
                try:
                    message_id = self._publisher.publish(item.data, item.attributes)
                except Exception as error:  # retried, then logged: a lost notification must be visible
                    if attempt == self._attempts:
                        self._log.error(
                            "publish failed; message dropped",
                            extra={
                                "topic": self._publisher.topic_path,
                                "attributes": dict(item.attributes),
                                "error": repr(error),
                            },
                        )
                    else:
                        time.sleep(0.2 * 2**attempt)
                else:
                    self._log.info(
                        "published",
                        extra={
                            "topic": self._publisher.topic_path,
                            "attributes": dict(item.attributes),
                            "message_id": message_id,
                        },
                    )
                    break

    def close(self, timeout: float = 5.0) -> None:
        """Flush what was submitted (bounded by timeout) and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)
        self._publisher.close()
