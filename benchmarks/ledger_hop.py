"""The ledger's share of a hop, in process against the Firestore emulator: less noise than a hop through Pub/Sub.

A stage's hop as the ledger sees it: read the run, claim the effect, act (nothing), conclude (record with the outbox
entry, publish to a bus in memory, mark published), all inside ``runtime.dispatch``'s deferral as a handler runs.
Timed to the publish (what delays the next stage) and to the end; Firestore operations counted per hop.

    python -m benchmarks.ledger_hop [--hops 200]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from local_emulator import stack as local
from local_emulator.common import processes
from tests.stagekit import Kit

from benchmarks.report import percentile
from cd4ml import events, ledger
from cd4ml.outcome import Outcome
from cd4ml.store import Counting, FirestoreStore, Operations

FIRESTORE_EMULATOR = local.GCLOUD_PLATFORM / "cloud-firestore-emulator/cloud_firestore_emulator"
SUBMITTED = {
    "model": "digits",
    "job": "projects/p/locations/europe-west1/customJobs/1",
    "dataset_sha256": "a" * 64,
    "model_dir": "gs://artifacts/runs/x/model",
}


@contextlib.contextmanager
def firestore(workdir: Path) -> Iterator[str]:
    """The Firestore emulator for the block; its host:port."""
    argv = lambda port: [str(FIRESTORE_EMULATOR), "start", "--host=127.0.0.1", f"--port={port}"]  # noqa: E731
    with processes.serving("firestore", argv, workdir) as host:
        yield host


def hops(host: str, count: int, warm_up: int = 20) -> dict[str, Any]:
    """``count`` hops (after ``warm_up``): ms to the publish and to the end, and operations per hop."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = host
    from google.cloud import firestore as client

    meter = Counting(FirestoreStore(client.Client(project=f"hop-{time.monotonic_ns()}")))
    kit = Kit("submit_training", ledger=ledger.Ledger(meter))
    published_at: list[float] = []
    publish = kit.bus.publish

    def stamped(event: events.Event) -> str:
        published_at.append(time.perf_counter())
        return publish(event)

    kit.bus.publish = stamped  # type: ignore[method-assign]
    to_publish, to_end = [], []
    spent = Operations()
    for n in range(warm_up + count):
        run_id = f"digits-2030{n // 86400 + 101:04d}t{n % 86400 // 3600:02d}{n % 3600 // 60:02d}{n % 60:02d}z"
        kit.seed(run_id, events=[])
        before = meter.total()
        start = time.perf_counter()
        with ledger.deferring():
            assert kit.ctx.ledger.run(run_id) is not None
            kit.ctx.ledger.once(run_id, "training-job", lambda: {"job": SUBMITTED["job"]})
            kit.ctx.conclude(run_id, Outcome.event(events.TRAINING_SUBMITTED, SUBMITTED, {"training.job": "j"}))
        end = time.perf_counter()
        if n >= warm_up:
            to_publish.append((published_at[-1] - start) * 1000)
            to_end.append((end - start) * 1000)
            hop = meter.total() - before
            spent = Operations(spent.reads + hop.reads, spent.writes + hop.writes, spent.commits + hop.commits)
    return {
        "hops": count,
        "to_publish_ms": _summary(to_publish),
        "to_end_ms": _summary(to_end),
        "per_hop": {k: v / count for k, v in vars(spent).items()},
    }


def _summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p90": round(percentile(ordered, 90), 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ledger_hop", description=__doc__)
    parser.add_argument("--hops", type=int, default=200, help="hops timed (default 200)")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cd4ml-ledger-hop-") as workdir, firestore(Path(workdir)) as host:
        result = hops(host, options.hops)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
