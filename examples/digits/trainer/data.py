"""Read the digits snapshot (CSV: 64 pixel columns and a label) and split it reproducibly."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split


def read_dataset(uri: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Every CSV under a gs:// prefix (or local folder), stacked into features and labels."""
    rows: list[list[str]] = []
    for text in _csv_texts(uri):
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        if header[-1] != "label":
            raise ValueError(f"expected the last column to be 'label', got {header[-1]!r}")
        rows.extend(reader)
    if not rows:
        raise ValueError(f"no rows under {uri}")
    table = np.array(rows, dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(np.int64)


def split(features: NDArray[np.float64], labels: NDArray[np.int64], test_size: float, seed: int) -> tuple:
    """The held-out split: stratified, the same for every run with the same data and seed."""
    return train_test_split(features, labels, test_size=test_size, random_state=seed, stratify=labels)


def _csv_texts(uri: str) -> list[str]:
    if not uri.startswith("gs://"):
        return [open(os.path.join(uri, n)).read() for n in sorted(os.listdir(uri)) if n.endswith(".csv")]
    from google.cloud import storage

    bucket, _, prefix = uri[5:].partition("/")
    client = _client()
    return [b.download_as_text() for b in sorted(client.list_blobs(bucket, prefix=prefix), key=lambda b: b.name)
            if b.name.endswith(".csv")]


def _client():  # type: ignore[no-untyped-def]
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("CLOUD_ML_PROJECT_ID", "local"), credentials=AnonymousCredentials())
    return storage.Client()
