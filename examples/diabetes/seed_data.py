"""Write the diabetes data set that scikit-learn ships as CSV: the model's source data for the local stack."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sklearn.datasets import load_diabetes


def write(folder: Path) -> Path:
    """``folder/diabetes.csv``: the 10 (scaled) baseline measurements, then the target (442 rows)."""
    data = load_diabetes()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "diabetes.csv"
    with target.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*data.feature_names, "target"])
        for row, value in zip(data.data, data.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), repr(float(value))])
    return target


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
