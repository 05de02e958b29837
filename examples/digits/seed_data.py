"""Write the digits data set that scikit-learn ships as CSV: the model's source data for the local stack."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sklearn.datasets import load_digits


def write(folder: Path) -> Path:
    """``folder/digits.csv``: 64 pixel columns then the label, one row per image (1797 rows)."""
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "digits.csv"
    with target.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"pixel_{i}" for i in range(digits.data.shape[1])] + ["label"])
        for row, label in zip(digits.data.astype(int), digits.target):
            writer.writerow([*row, label])
    return target


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
