"""The bench's own local stack, its model, its watch tick, and the runs it requests and waits for.

The stack runs in a state directory of its own (never the developer's ``.cd4ml``), with every example model
plus ``digits-bench``: a copy of ``examples/digits`` whose trainer is the nearest-centroid one in
``_centroid_trainer.py`` (see there why) and whose canary has its own Gate pipeline; and its twin
``digits-bench-gated``, whose threshold (1.01) no model reaches, for runs that end at the gate. Cloud Scheduler's
stand-in is not started: the bench publishes the same watch tick itself, so it can hold the ticks while it
measures cold starts (a tick must find the jobs it prepared, not a stack function that got there first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from cd4ml_models.folder import read as read_manifest
from local_emulator import stack as local
from local_emulator.scheduler import scheduler_attributes

from cd4ml import clients, ledger
from cd4ml.bus import Bus
from cd4ml.catalog import topic_id
from cd4ml.events import RUN_REQUESTED, WATCH_TICKED, Event, format_time, now
from cd4ml.manifest import Manifest
from cd4ml.run import TERMINAL
from cd4ml.runtime import METER
from cd4ml.settings import Settings

MODEL = "digits-bench"
#: Its twin whose gate cannot pass: a run of it ends at evaluation.failed, in half the time of a full run.
GATED_MODEL = "digits-bench-gated"
#: A bench model with the caches on (benchmarks/cache.py): its second run on the same data is served from them.
CACHED_MODEL = "digits-bench-cached"
SOURCE = "//cd4ml/benchmarks"
TRAINER = Path(__file__).with_name("_centroid_trainer.py")


def say(message: str) -> None:
    """Progress, on stderr: stdout is the report's."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def exit_on_sigterm() -> None:
    """SIGTERM ends the driver through its ``finally`` blocks (the local stack is stopped by pid); a second SIGTERM
    (``timeout`` forwarding one, a hurried operator) is ignored, so it cannot abort that cleanup halfway."""

    def leave(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, leave)


def make_model(workdir: Path, name: str = MODEL, threshold: float = 0.8, cache: bool = False) -> Path:
    """A bench model folder: examples/digits with the centroid trainer, its own canary pipeline and gate."""
    folder = workdir / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(local.REPO / "examples" / "digits", folder, ignore=shutil.ignore_patterns("__pycache__"))
    trainer = folder / "trainer"
    shutil.rmtree(trainer)
    trainer.mkdir()
    (trainer / "__init__.py").write_text("")
    shutil.copy(TRAINER, trainer / "task.py")
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["name"] = name
    manifest["description"] = "A bench digits model: nearest centroids, so a hundred trainings fit in minutes."
    manifest["training"]["python_package"]["package_uris"] = [f"packages/{name}/trainer-0.1.0.tar.gz"]
    manifest["training"]["hyperparameters"] = {}
    manifest["evaluation"]["threshold"] = threshold
    manifest["cache"] = cache  # off: every bench run trains, builds and delivers (the cache bench turns it on)
    # serve.py loads model.joblib and the centroid trainer writes model.json: the smoke test cannot pass (every
    # concurrent run failed its build), and the bench measures the orchestration around the build, not the smoke.
    manifest["serving"].pop("smoke", None)
    manifest["canary"] = {"application": name, "pipeline": f"{name}-canary"}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


class Ticker:
    """Publishes the watch tick every ``seconds``, as the Cloud Scheduler job does, unless held."""

    def __init__(self, bus: Bus, project: str, seconds: float) -> None:
        self._bus = bus
        self._topic = bus.topic_path(topic_id(WATCH_TICKED))
        self._attributes = scheduler_attributes(project, "cd4ml-watch-tick", WATCH_TICKED)
        self._seconds = seconds
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._loop, name="bench-ticker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds):
            if self._running.is_set():
                self._bus.publisher.publish(self._topic, b"{}", **self._attributes)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No ticks inside the block."""
        self._running.clear()
        try:
            yield
        finally:
            self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Pipeline:
    """The running stack as the bench drives it: request runs of the bench model, read the ledger, ask the stand-ins."""

    def __init__(self, stack: local.Stack, model: Manifest, tick_seconds: float) -> None:
        self.stack = stack
        self.model = model
        self.env = local.client_env(stack)
        os.environ.update({k: v for k, v in self.env.items() if not k.startswith("CD4ML_")})
        self.settings = Settings.from_env(self.env)
        self.db = clients.firestore_client(self.settings)
        self.ledger = ledger.Ledger.firestore(self.db)
        self.bus = Bus(self.settings.project)
        self.ticker = Ticker(self.bus, self.settings.project, tick_seconds)
        self._next_slot = now().replace(microsecond=0)
        self._slot_lock = threading.Lock()

    @cached_property
    def jobs(self) -> Any:
        """The Vertex AI JobService client of the local stand-in."""
        return clients.job_service_client(self.settings)

    @cached_property
    def builds(self) -> Any:
        """The Cloud Build client of the local stand-in."""
        return clients.cloud_build_client(self.settings)

    def process_env(self) -> dict[str, str]:
        """The environment of a process the bench starts beside the stack: this one's, the emulators, no CD4ML_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CD4ML_")}
        env.update({k: v for k, v in self.env.items() if not k.startswith("CD4ML_")})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def slot(self) -> datetime:
        """A scheduled time no other run of the bench has: run ids derive from it, to the second."""
        with self._slot_lock:
            slot = self._next_slot
            self._next_slot += timedelta(seconds=1)
            return slot

    def request(self, count: int, model: str = MODEL) -> list[str]:
        """Publish ``count`` run.requested events of ``model`` at once (each its own scheduled time); their run ids."""
        topic = self.bus.topic_path(topic_id(RUN_REQUESTED))
        pending = []
        run_ids = []
        for _ in range(count):
            scheduled = self.slot()
            run_id = ledger.run_id(model, scheduled)
            event = Event.new(
                RUN_REQUESTED,
                run_id,
                {"model": model, "scheduled_time": format_time(scheduled), "trigger": "manual"},
                source=SOURCE,
            )
            data, attributes = event.to_message()
            pending.append(self.bus.publisher.publish(topic, data, **attributes))
            run_ids.append(run_id)
        for future in pending:
            future.result(timeout=30)
        return run_ids

    def open_run(self) -> str:
        """Open a run of the bench model in the ledger directly, as fetch_data would, without its data."""
        scheduled = self.slot()
        run_id = ledger.run_id(self.model.name, scheduled)
        opening = Event.new(
            RUN_REQUESTED,
            run_id,
            {"model": self.model.name, "scheduled_time": format_time(scheduled), "trigger": "manual"},
            source=SOURCE,
        )
        self.ledger.open_run(
            run_id,
            model=self.model.name,
            scheduled_time=scheduled,
            trigger="manual",
            manifest=self.model.raw,
            event=opening,
        )
        return run_id

    def records(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        """The ledger records of these runs, in one batched read."""
        refs = [self.db.collection(ledger.RUNS).document(r) for r in run_ids]
        return {snap.id: snap.to_dict() or {} for snap in self.db.get_all(refs) if snap.exists}

    def wait(self, run_ids: list[str], timeout: float, poll: float = 1.0) -> dict[str, dict[str, Any]]:
        """Poll until every run ended; the records, unfinished ones included, at the deadline."""
        deadline = time.monotonic() + timeout
        found: dict[str, dict[str, Any]] = {}
        pending = list(run_ids)
        while pending:
            found.update(self.records(pending))
            pending = [r for r in pending if (found.get(r) or {}).get("status") not in TERMINAL]
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(poll)
        return found

    def close(self) -> None:
        self.ticker.stop()


@contextlib.contextmanager
def running(
    workdir: Path, tick_seconds: float, extra: Sequence[Path] = (), supervised: bool = False
) -> Iterator[Pipeline]:
    """A private local stack under ``workdir`` for the duration of the block; every process stopped by pid after.

    ``extra`` model folders are pushed too; ``supervised`` runs the functions behind local_emulator.stack.supervisor.
    """
    os.environ["CD4ML_STATE_DIR"] = str(workdir / "state")
    os.environ[METER] = "1"  # each function logs the Firestore operations of every message (benchmarks.operations)
    folders = [
        make_model(workdir),
        make_model(workdir, GATED_MODEL, threshold=1.01),
        make_model(workdir, CACHED_MODEL, cache=True),
    ]
    started = time.monotonic()
    stack = local.up(
        models=[*local.default_models(), *folders, *extra], scheduler=False, say=say, supervised=supervised
    )
    pipeline: Pipeline | None = None
    try:
        say(f"stack up in {time.monotonic() - started:.1f} s (state in {stack.root})")
        pipeline = Pipeline(stack, read_manifest(folders[0]), tick_seconds)
        yield pipeline
    finally:
        if pipeline is not None:
            pipeline.close()
        local.down(stack, say=say)
