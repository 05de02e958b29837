"""The bench model's trainer: a nearest-centroid digits classifier in plain Python, so 100 trainings fit the budget.

Copied into the bench's variant of ``examples/digits`` as ``trainer/task.py``; the local Vertex AI stand-in runs
it as ``python -m trainer.task ARGS`` with Vertex's environment. Like the digits trainer it reads the run's
snapshot at ``CD4ML_DATASET_URI``, holds out a seeded split, and writes exactly one ``model.*`` file and
``metrics.json`` (``{"metrics": {...}, "model_sha256": ...}``) to ``AIP_MODEL_DIR`` — without scikit-learn,
whose import alone costs a second of the two CPUs the whole bench shares.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import sys
from typing import Any

Row = tuple[list[float], int]


def _client() -> Any:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return storage.Client(project=os.environ.get("CLOUD_ML_PROJECT_ID", "local"), credentials=anonymous)
    return storage.Client()


def _read(uri: str) -> list[Row]:
    """Every CSV row under the gs:// snapshot prefix: pixel columns, then the label."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    rows: list[Row] = []
    for blob in sorted(_client().list_blobs(bucket, prefix=prefix), key=lambda b: b.name):
        if blob.name.endswith(".csv"):
            reader = csv.reader(io.StringIO(blob.download_as_text()))
            next(reader)
            rows.extend(([float(v) for v in r[:-1]], int(r[-1])) for r in reader)
    if not rows:
        raise ValueError(f"no rows under {uri}")
    return rows


def _centroids(rows: list[Row]) -> dict[int, list[float]]:
    sums: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for features, label in rows:
        total = sums.setdefault(label, [0.0] * len(features))
        for i, value in enumerate(features):
            total[i] += value
        counts[label] = counts.get(label, 0) + 1
    return {label: [v / counts[label] for v in total] for label, total in sums.items()}


def _predict(centroids: dict[int, list[float]], features: list[float]) -> int:
    return min(centroids, key=lambda label: sum((a - b) ** 2 for a, b in zip(centroids[label], features, strict=True)))


def _save(data: bytes, name: str) -> None:
    target = os.environ["AIP_MODEL_DIR"].rstrip("/") + "/" + name
    bucket, _, path = target.removeprefix("gs://").partition("/")
    _client().bucket(bucket).blob(path).upload_from_string(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    args, _ = parser.parse_known_args(argv)  # hyperparameters of the digits manifest mean nothing here
    rows = _read(os.environ["CD4ML_DATASET_URI"])
    random.Random(args.seed).shuffle(rows)
    held_out = int(len(rows) * args.test_size)
    test, train = rows[:held_out], rows[held_out:]
    centroids = _centroids(train)
    accuracy = sum(_predict(centroids, f) == label for f, label in test) / len(test)
    model = json.dumps({"centroids": {str(k): v for k, v in sorted(centroids.items())}}).encode()
    sha256 = hashlib.sha256(model).hexdigest()
    report = {
        "metrics": {"accuracy": accuracy},
        "model_file": "model.json",
        "model_sha256": sha256,
        "train_rows": len(train),
        "test_rows": len(test),
        "seed": args.seed,
    }
    _save(model, "model.json")
    _save(json.dumps(report, indent=2).encode(), "metrics.json")
    print(json.dumps(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
