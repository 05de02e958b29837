"""Train the diabetes regression on the run's snapshot; save it, with its held-out metrics, to AIP_MODEL_DIR.

Vertex AI runs this module (``python -m trainer.task ARGS``) with AIP_MODEL_DIR set; cd4ml adds
CD4ML_DATASET_URI (the content-addressed snapshot) and passes hyperparameters as ``--name=value``.
The model is a ridge regression saved as JSON (its coefficients): the serving image needs no library.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from sklearn.linear_model import Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from trainer.data import client, read_dataset, split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--alpha", type=float, default=0.1)
    args = parser.parse_args(argv)

    names, features, targets = read_dataset(os.environ["CD4ML_DATASET_URI"])
    x_train, x_test, y_train, y_test = split(features, targets, args.test_size, args.seed)
    model = Ridge(alpha=args.alpha).fit(x_train, y_train)
    predicted = model.predict(x_test)
    metrics = {
        "rmse": float(mean_squared_error(y_test, predicted) ** 0.5),
        "mae": float(mean_absolute_error(y_test, predicted)),
        "r2": float(r2_score(y_test, predicted)),
    }
    document = {"features": names, "coef": [float(c) for c in model.coef_], "intercept": float(model.intercept_)}
    data = json.dumps(document, sort_keys=True).encode()
    report = {
        "metrics": metrics,
        "model_file": "model.json",
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "train_rows": len(y_train),
        "test_rows": len(y_test),
        "alpha": args.alpha,
    }
    _save(data, "model.json")
    _save(json.dumps(report, indent=2).encode(), "metrics.json")
    print(json.dumps(report), file=sys.stderr)
    return 0


def _save(data: bytes, name: str) -> None:
    """Write ``name`` under AIP_MODEL_DIR (gs:// on Vertex, or a local folder)."""
    target = os.environ["AIP_MODEL_DIR"].rstrip("/") + "/" + name
    if target.startswith("gs://"):
        bucket, _, path = target[5:].partition("/")
        client().bucket(bucket).blob(path).upload_from_string(data)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


if __name__ == "__main__":
    sys.exit(main())
