"""Read the diabetes snapshot (CSV: feature columns, then ``target``) and split it reproducibly."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split


def read_dataset(uri: str) -> tuple[list[str], Any, Any]:
    """Every CSV under a gs:// prefix (or local folder): the feature names, the features and the targets."""
    names: list[str] = []
    rows: list[list[str]] = []
    for text in _csv_texts(uri):
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        if header[-1] != "target":
            raise ValueError(f"expected the last column to be 'target', got {header[-1]!r}")
        names = header[:-1]
        rows.extend(reader)
    if not rows:
        raise ValueError(f"no rows under {uri}")
    table = np.array(rows, dtype=np.float64)
    return names, table[:, :-1], table[:, -1]


def split(features: Any, targets: Any, test_size: float, seed: int) -> Any:
    """The held-out split: the same for every run with the same data and seed."""
    return train_test_split(features, targets, test_size=test_size, random_state=seed)


def _csv_texts(uri: str) -> list[str]:
    if not uri.startswith("gs://"):
        return [open(os.path.join(uri, n)).read() for n in sorted(os.listdir(uri)) if n.endswith(".csv")]
    bucket, _, prefix = uri[5:].partition("/")
    blobs = sorted(client().list_blobs(bucket, prefix=prefix), key=lambda b: b.name)
    return [b.download_as_text() for b in blobs if b.name.endswith(".csv")]


def client() -> Any:
    """A Cloud Storage client: anonymous against an emulator (STORAGE_EMULATOR_HOST), else the job's identity."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=os.environ.get("CLOUD_ML_PROJECT_ID", "local"), credentials=AnonymousCredentials()
        )
    return storage.Client()
