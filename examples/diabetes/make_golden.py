"""Write serving/smoke.jsonl: golden requests drawn from the held-out split the trainer evaluates on.

The split is the trainer's own (trainer.data.split with the manifest's --test-size and --seed) over the data
set seed_data.py writes, so no golden row was seen in training. Each line POSTs one row to /predict and
expects its true target: a prediction within the manifest's smoke abs_tolerance agrees.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROWS = 40


def write(target: Path, rows: int = ROWS) -> Path:
    sys.path.insert(0, str(HERE))
    from seed_data import write as seed
    from trainer.data import read_dataset, split

    manifest = yaml.safe_load((HERE / "manifest.yaml").read_text())
    args = dict(a.removeprefix("--").split("=", 1) for a in manifest["training"]["args"])
    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp))
        _, features, targets = read_dataset(tmp)
    _, held_out, _, truth = split(features, targets, float(args["test-size"]), int(args["seed"]))
    with target.open("w") as out:
        for row, value in zip(held_out[:rows], truth[:rows], strict=True):
            line = {"request": {"instances": [[float(v) for v in row]]}, "expected": {"predictions": [float(value)]}}
            out.write(json.dumps(line, separators=(",", ":")) + "\n")
    return target


if __name__ == "__main__":
    print(write(HERE / "serving" / "smoke.jsonl"))
