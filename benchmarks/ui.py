"""The web view's server time over a large ledger: 10,000 runs in the Firestore emulator, pages timed in-process.

Each request goes through Flask's test client to ``cd4ml_ui`` over the stack's Firestore (query, projection,
template), so the figure is the server's time without the browser or the network. Only finished runs are seeded,
so no tick stage picks them up while the pages are timed.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.pipeline import Pipeline, say
from benchmarks.report import Check, Section, Summary
from cd4ml.events import format_time

TARGET = "ui"
LIMIT_MS = 300.0
RUNS = 10_000
MODELS = tuple(f"bench-ui-{i}" for i in range(10))
STATUSES = ("succeeded", "failed", "rejected", "skipped")
SAMPLES = 20
_FN = "//cloudfunctions.googleapis.com/projects/cd4ml-local/locations/us-central1/functions/"
_PATH = (
    ("run.requested", 0.0, None),
    ("data.fetched", 1.1, "fetch_data"),
    ("training.submitted", 1.9, "submit_training"),
    ("training.completed", 9.4, "watch_training"),
    ("evaluation.passed", 9.8, "evaluate"),
    ("delivery.cleared", 10.0, "clear_delivery"),
    ("image.built", 26.3, "on_build"),
    ("image.pushed", 26.4, "on_push"),
    ("canary.triggered", 26.7, "trigger_canary"),
    ("canary.succeeded", 29.4, "watch_canary"),
    ("model.promoted", 29.7, "promote"),
)


def record(i: int, start: datetime, rng: random.Random) -> dict[str, Any]:
    """A finished run shaped like the ledger's (about the size of a real one: events, manifest, lineage)."""
    model = MODELS[i % len(MODELS)]
    opened = start + timedelta(seconds=i * 7)
    status = STATUSES[rng.randrange(len(STATUSES))]
    path = _PATH if status == "succeeded" else _PATH[:5]
    run_id = f"{model}-{opened:%Y%m%dt%H%M%S}z"
    accuracy = round(rng.uniform(0.85, 0.99), 4)
    return {
        "run_id": run_id,
        "model": model,
        "status": status,
        "trigger": "schedule",
        "scheduled_time": format_time(opened),
        "created_at": format_time(opened),
        "updated_at": format_time(opened + timedelta(seconds=path[-1][1])),
        "events": [
            {
                "type": f"cd4ml.{kind}.v1",
                "id": f"{run_id}-{n}",
                "time": format_time(opened + timedelta(seconds=at)),
                "source": _FN + stage if stage else "//cloudscheduler",
            }
            for n, (kind, at, stage) in enumerate(path)
        ],
        "manifest": {"name": model, "evaluation": {"metric": "accuracy", "threshold": 0.9}, "serving": {"port": 8080}},
        "dataset": {"uri": f"gs://d/datasets/{model}/{'ab' * 32}/", "sha256": "ab" * 32, "rows": 1797, "bytes": 267082},
        "training": {
            "job": f"projects/p/locations/us-central1/customJobs/{i}",
            "state": "JOB_STATE_SUCCEEDED",
            "active": False,
        },
        "model_artifact": {"uri": f"gs://a/runs/{run_id}/model/model.joblib", "sha256": "cd" * 32},
        "evaluation": {
            "passed": status != "failed",
            "metrics": {"accuracy": accuracy, "f1_macro": accuracy},
            "gate": {"metric": "accuracy", "threshold": 0.9, "max_regression": 0.02, "value": accuracy},
            "reasons": [],
        },
        **(
            {"error": {"stage": "evaluate", "message": "accuracy below the threshold"}}
            if status in ("failed", "rejected")
            else {}
        ),
    }


def seed(db: Any, count: int = RUNS) -> list[str]:
    """Write ``count`` finished runs to ``runs/`` in batches of 500 (Firestore's limit per commit); their ids."""
    rng = random.Random(21)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ids: list[str] = []
    for first in range(0, count, 500):
        batch = db.batch()
        for i in range(first, min(first + 500, count)):
            run = record(i, start, rng)
            batch.set(db.collection("runs").document(run["run_id"]), run)
            ids.append(run["run_id"])
        batch.commit()
    return ids


def _time(client: Any, path: str, samples: int) -> tuple[Summary, str]:
    client.get(path)  # warm: the first query of a shape also plans it
    elapsed = []
    body = ""
    for _ in range(samples):
        started = time.perf_counter()
        answer = client.get(path)
        elapsed.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, f"{path}: HTTP {answer.status_code}"
        body = answer.get_data(as_text=True)
    return Summary.of(elapsed), body


def measure(pipeline: Pipeline, count: int = RUNS, samples: int = SAMPLES) -> Section:
    from cd4ml_ui.app import PAGE_SIZE, create_app
    from cd4ml_ui.queries import FirestoreLedger

    say(f"ui: seeding {count} runs into the ledger")
    started = time.monotonic()
    ids = seed(pipeline.db, count)
    seeded_s = time.monotonic() - started
    client = create_app(FirestoreLedger(pipeline.db)).test_client()
    say(f"ui: {count} runs seeded in {seeded_s:.1f} s; timing the pages")
    first, body = _time(client, "/runs", samples)
    rows = body.count("<tr data-run=")
    filtered, _ = _time(client, f"/runs?model={MODELS[3]}&status=failed", samples)
    older, _ = _time(client, f"/runs?after={ids[count // 2]}", samples)
    run, run_body = _time(client, f"/runs/{ids[count // 3]}", samples)
    model, _ = _time(client, f"/models/{MODELS[3]}", max(5, samples // 4))
    checks = (
        Check(
            TARGET,
            f"runs page, first page of {PAGE_SIZE} ({count} runs)",
            first.text("ms"),
            f"p50 ≤ {LIMIT_MS:.0f} ms",
            first.p50 <= LIMIT_MS and rows == PAGE_SIZE,
            value=first.p50,
            limit_value=LIMIT_MS,
        ),
        Check(
            TARGET,
            "run page",
            run.text("ms"),
            f"p50 ≤ {LIMIT_MS:.0f} ms",
            run.p50 <= LIMIT_MS and "data-node" in run_body,
            value=run.p50,
            limit_value=LIMIT_MS,
        ),
    )
    return Section(
        target=TARGET,
        definition=f"server time of a page (Flask test client → cd4ml_ui → Firestore emulator), {samples} samples after a warm-up",
        checks=checks,
        notes=(
            f"{count} runs seeded in {seeded_s:.1f} s; first page rows: {rows}",
            f"runs page filtered by model and status: {filtered.text('ms')}",
            f"runs page half-way through the ledger (cursor): {older.text('ms')}",
            f"model page (up to 200 runs plotted): {model.text('ms')}",
        ),
        data={
            "runs": count,
            "first_page_ms": first.p50,
            "run_page_ms": run.p50,
            "filtered_ms": filtered.p50,
            "older_page_ms": older.p50,
            "model_page_ms": model.p50,
        },
    )
