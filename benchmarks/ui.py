"""The web view's server time with 10,000 runs in the ledger, and its Firestore path on the emulator.

Each request goes through Flask's test client to ``cd4ml_ui`` (query, projection, template), so a figure is the
server's time without the browser or the network. The 10,000 runs are served by the in-memory ledger: the
Firestore emulator scans every document on every query (a page of 50 over 10,000 runs took 15-35 s here), while
Firestore serves these queries from the composite indexes in terraform/firestore.tf in time proportional to the
page, not to the ledger ("query performance is proportional to the size of your result set, not your data set",
https://firebase.google.com/docs/firestore). The same pages are also timed through ``FirestoreLedger`` on the
stack's emulator with a small ledger, as the round trip of the real query path.
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
#: Runs written to the stack's Firestore emulator for the real query path, and how often each page is timed there.
EMULATOR_RUNS = 300
EMULATOR_SAMPLES = 5
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


def seed(db: Any, count: int, batch_size: int = 100) -> list[str]:
    """Write ``count`` finished runs to ``runs/`` in batches (Firestore takes up to 500 writes per commit; the
    emulator under load timed out on 300 large documents at once); their ids."""
    rng = random.Random(21)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ids: list[str] = []
    for first in range(0, count, batch_size):
        batch = db.batch()
        for i in range(first, min(first + batch_size, count)):
            run = record(i, start, rng)
            batch.set(db.collection("runs").document(run["run_id"]), run)
            ids.append(run["run_id"])
        batch.commit(timeout=300)
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
    from cd4ml_ui.queries import FirestoreLedger, MemoryLedger

    rng = random.Random(21)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    runs = [record(i, start, rng) for i in range(count)]
    ids = [r["run_id"] for r in runs]
    client = create_app(MemoryLedger(runs)).test_client()
    say(f"ui: timing the pages over {count} runs")
    first, body = _time(client, "/runs", samples)
    rows = body.count("<tr data-run=")
    filtered, _ = _time(client, f"/runs?model={MODELS[3]}&status=failed", samples)
    older, _ = _time(client, f"/runs?after={ids[count // 2]}", samples)
    run, run_body = _time(client, f"/runs/{ids[count // 3]}", samples)
    model, _ = _time(client, f"/models/{MODELS[3]}", max(5, samples // 4))

    say(f"ui: the Firestore path on the emulator with {EMULATOR_RUNS} runs")
    seeded = seed(pipeline.db, EMULATOR_RUNS)
    on_emulator = create_app(FirestoreLedger(pipeline.db)).test_client()
    emulator_first, emulator_body = _time(on_emulator, "/runs", EMULATOR_SAMPLES)
    emulator_run, _ = _time(on_emulator, f"/runs/{seeded[-1]}", EMULATOR_SAMPLES)
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
            f"run page ({count} runs)",
            run.text("ms"),
            f"p50 ≤ {LIMIT_MS:.0f} ms",
            run.p50 <= LIMIT_MS and "data-node" in run_body,
            value=run.p50,
            limit_value=LIMIT_MS,
        ),
        Check(
            TARGET,
            f"Firestore path on the emulator ({EMULATOR_RUNS} runs): a full first page",
            f"{emulator_body.count('<tr data-run=')} rows; {emulator_first.text('ms')}",
            f"{PAGE_SIZE} rows",
            emulator_body.count("<tr data-run=") == PAGE_SIZE,
        ),
    )
    return Section(
        target=TARGET,
        definition=f"server time of a page (Flask test client → cd4ml_ui → ledger), {samples} samples after a warm-up",
        checks=checks,
        notes=(
            f"runs page filtered by model and status: {filtered.text('ms')}",
            f"runs page half-way through the ledger (cursor): {older.text('ms')}",
            f"model page (up to 200 runs plotted): {model.text('ms')}",
            f"on the Firestore emulator ({EMULATOR_RUNS} runs): runs page {emulator_first.text('ms')}; "
            f"run page {emulator_run.text('ms')} (the emulator scans every document per query)",
        ),
        data={
            "runs": count,
            "first_page_ms": first.p50,
            "run_page_ms": run.p50,
            "filtered_ms": filtered.p50,
            "older_page_ms": older.p50,
            "model_page_ms": model.p50,
            "emulator_runs": EMULATOR_RUNS,
            "emulator_first_page_ms": emulator_first.p50,
            "emulator_run_page_ms": emulator_run.p50,
        },
    )
