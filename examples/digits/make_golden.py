"""Write serving/smoke.jsonl: golden requests drawn from the held-out split the trainer evaluates on.

The split is the trainer's own (trainer.data.split with the manifest's --test-size and --seed) over the
data set seed_data.py writes, so no golden row was seen in training. Each line POSTs one image to
/predict and expects its true label: a model that agrees less than the manifest's min_agreement fails
the build's smoke test.
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

    args = dict(a.removeprefix("--").split("=", 1) for a in yaml.safe_load((HERE / "manifest.yaml").read_text())
                ["training"]["args"])
    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp))
        features, labels = read_dataset(tmp)
    _, held_out, _, truth = split(features, labels, float(args["test-size"]), int(args["seed"]))
    with target.open("w") as out:
        for row, label in zip(held_out[:rows], truth[:rows], strict=True):
            out.write(json.dumps({"request": {"instances": [[int(v) for v in row]]},
                                  "expected": {"predictions": [int(label)]}}, separators=(",", ":")) + "\n")
    return target


if __name__ == "__main__":
    print(write(HERE / "serving" / "smoke.jsonl"))
