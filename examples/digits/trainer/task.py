"""Train the digits classifier on the run's snapshot and save it, with its held-out metrics, to AIP_MODEL_DIR.

Vertex AI runs this module (``python -m trainer.task ARGS``) with AIP_MODEL_DIR set; cd4ml adds
CD4ML_DATASET_URI (the content-addressed snapshot) and passes hyperparameters as ``--name=value``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile

import joblib
from sklearn.ensemble import RandomForestClassifier

from trainer.data import _client, read_dataset, split
from trainer.evaluate import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n_estimators", type=int, default=100)
    parser.add_argument("--max_depth", type=int, default=None)
    parser.add_argument("--crash", action="store_true", help="fail on purpose (to exercise failure handling)")
    args = parser.parse_args(argv)
    if args.crash:
        raise RuntimeError("trainer crashed on purpose (--crash)")

    features, labels = read_dataset(os.environ["CD4ML_DATASET_URI"])
    x_train, x_test, y_train, y_test = split(features, labels, args.test_size, args.seed)
    model = RandomForestClassifier(n_estimators=args.n_estimators, max_depth=args.max_depth, random_state=args.seed)
    model.fit(x_train, y_train)
    metrics = evaluate(model, x_test, y_test)

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.joblib")
        joblib.dump(model, local)
        with open(local, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        report = {"metrics": metrics, "model_file": "model.joblib", "model_sha256": sha,
                  "train_rows": len(y_train), "test_rows": len(y_test), "seed": args.seed}
        _save(local, "model.joblib")
        _save_text(json.dumps(report, indent=2), "metrics.json")
    print(json.dumps(report), file=sys.stderr)
    return 0


def _save(local: str, name: str) -> None:
    target = os.environ["AIP_MODEL_DIR"].rstrip("/") + "/" + name
    if target.startswith("gs://"):
        bucket, _, path = target[5:].partition("/")
        _client().bucket(bucket).blob(path).upload_from_filename(local)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(local, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())


def _save_text(text: str, name: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=name, delete=False) as f:
        f.write(text)
    _save(f.name, name)
    os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main())
