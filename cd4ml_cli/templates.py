"""``cd4ml model init NAME --template KIND``: a model folder that passes ``model check`` and runs end to end as made.

Each template is a linear model on a data set scikit-learn ships (iris for the classifier, diabetes for the
regressor and the container), a trainer package for Vertex AI's sklearn-cpu.1-6 executor image (``container``: a
trainer image of its own, built from ``trainer/Dockerfile`` by ``cd4ml model push``), a serving image that needs
no pip install (the model is its coefficients as JSON, served by the standard library), golden requests drawn
from the held-out split the trainer evaluates on, and seed data for the local stack. Replace the data and the
estimator, keep the contracts (the trainer's outputs, the serving routes) and the folder keeps working.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cd4ml.errors import Cd4mlError

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class Template:
    """What differs between the kinds: the data set, the estimator, its metrics and how the gate and smoke read them."""

    loader: str
    target: str
    estimator: str
    hyperparameter: tuple[str, str]
    evaluation: str
    smoke_extra: str
    description: str


TEMPLATES = {
    "sklearn-classifier": Template(
        loader="load_iris",
        target="label",
        estimator="LogisticRegression(C=args.C, max_iter=1000)",
        hyperparameter=("C", "1.0"),
        evaluation="  metric: accuracy                         # higher is better (direction: maximize, the default)\n"
        "  threshold: 0.8\n  max_regression: 0.02",
        smoke_extra="",
        description="a logistic regression classifier (iris, scikit-learn's copy)",
    ),
    "sklearn-regressor": Template(
        loader="load_diabetes",
        target="target",
        estimator="Ridge(alpha=args.alpha)",
        hyperparameter=("alpha", "0.1"),
        evaluation="  metric: rmse\n  direction: minimize                      # lower is better\n  threshold: 65\n"
        "  max_regression_relative: 0.02           # at most 2 % worse than the champion",
        smoke_extra="    abs_tolerance: 100                      # a prediction within 100 of the true target agrees\n",
        description="a ridge regression (diabetes progression, scikit-learn's copy)",
    ),
    "container": Template(
        loader="load_diabetes",
        target="target",
        estimator="",  # trainer/task.py solves the ridge regression itself: the image has no scikit-learn
        hyperparameter=("alpha", "0.1"),
        evaluation="  metric: rmse\n  direction: minimize                      # lower is better\n  threshold: 65\n"
        "  max_regression_relative: 0.02           # at most 2 % worse than the champion",
        smoke_extra="    abs_tolerance: 100                      # a prediction within 100 of the true target agrees\n",
        description="a ridge regression trained in an image of its own (diabetes progression, scikit-learn's copy)",
    ),
}

_MANIFEST = """\
# {name}: {description}. Made by `cd4ml model init`; the fields are described in schemas/manifest.schema.json.
name: {name}
description: {description}
schedule: "0 4 * * *"                       # Cloud Scheduler cron (UTC unless time_zone says otherwise)
data:
  source:
    gcs_prefix: sources/{name}/             # in the data bucket: `cd4ml data upload {name} PATH` puts files there
training:
  worker_pool:
    machine_type: n1-standard-4
{trainer}
  args: [--test-size=0.25, --seed=7]
  hyperparameters:
    {hp_name}: {hp_value}
  timeout_seconds: 900
evaluation:
{evaluation}
serving:
  dockerfile: serving/Dockerfile
  base_image: python:3.11-slim
  smoke:                                    # in the build, before the push: /health, then the golden requests
    requests: serving/smoke.jsonl
    command: [python3, /opt/serve.py]
    min_agreement: 0.8
{smoke_extra}    latency_ms: 2000
canary:                                     # the Spinnaker pipeline a webhook starts (the local stack has one)
  application: {name}
  webhook_source: cd4ml-{name}
  pipeline: {name}-canary
"""

_PYTHON_PACKAGE = """\
  python_package:
    executor_image: us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-6:latest
    package_uris: [packages/{name}/trainer-0.1.0.tar.gz]
    python_module: trainer.task"""

_CONTAINER = """\
  container:                                # a trainer image of the model's own ({{registry}}: its repository)
    image_uri: "{{registry}}/{name}-trainer:latest"   # a run pins this tag to its digest when it submits the job
    dockerfile: trainer/Dockerfile          # `cd4ml model push` builds trainer/ with Cloud Build and pushes image_uri
    command: [python3, -m, trainer.task]    # replaces the image's ENTRYPOINT; args and hyperparameters follow"""

_SETUP = '''\
"""The {name} trainer, packaged the way Vertex AI's Python package training expects."""

from setuptools import find_packages, setup

setup(
    name="trainer",
    version="0.1.0",
    packages=find_packages(include=["trainer", "trainer.*"]),
    # The executor image (sklearn-cpu.1-6) ships these: unpinned, so pip keeps its versions.
    install_requires=["scikit-learn", "numpy", "google-cloud-storage"],
)
'''

_SEED = '''\
"""Write the source data for the local stack (and `cd4ml model train --local`): scikit-learn's {loader} as CSV."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from sklearn.datasets import {loader}


def write(folder: Path) -> Path:
    """``folder/data.csv``: the feature columns, then ``{target}``."""
    data = {loader}()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "data.csv"
    with target.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*data.feature_names, "{target}"])
        for row, value in zip(data.data, data.target, strict=True):
            writer.writerow([*(repr(float(v)) for v in row), repr(value.item())])
    return target


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
'''

_TASK = '''\
"""Train {name} on the run's snapshot; write the model and its held-out metrics to AIP_MODEL_DIR.

Vertex AI runs ``python -m trainer.task ARGS`` with AIP_MODEL_DIR set (gs://…, or a local folder under
`cd4ml model train --local`); cd4ml adds CD4ML_DATASET_URI (the run's snapshot of data.source) and passes the
manifest's hyperparameters as ``--name=value``. The contract: exactly one ``model.*`` file, and ``metrics.json``
with {{"metrics": {{name: number}}, "model_sha256": sha256 of the model file}}.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
from typing import Any

import numpy as np
from sklearn import metrics as m
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split

TARGET = "{target}"


def read_dataset(uri: str) -> tuple[list[str], Any, Any]:
    """Every CSV under the snapshot (gs:// prefix or local folder): feature names, features, targets."""
    names: list[str] = []
    rows: list[list[str]] = []
    for text in _csv_texts(uri):
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        if header[-1] != TARGET:
            raise ValueError(f"expected the last column to be {{TARGET!r}}, got {{header[-1]!r}}")
        names = header[:-1]
        rows.extend(reader)
    if not rows:
        raise ValueError(f"no rows under {{uri}}")
    table = np.array(rows, dtype=np.float64)
    return names, table[:, :-1], table[:, -1]


def split(features: Any, targets: Any, test_size: float, seed: int) -> Any:
    """The held-out split: the same for every run with the same data and seed (make_golden.py uses it too)."""
    return train_test_split(features, targets, test_size=test_size, random_state=seed)


def fit(args: argparse.Namespace, x: Any, y: Any) -> tuple[dict[str, Any], Any]:
    """The estimator, fitted, as the JSON document serve.py reads; and the estimator."""
    estimator = {estimator}
    if isinstance(estimator, LogisticRegression):
        y = y.astype(int)
    estimator.fit(x, y)
    if isinstance(estimator, LogisticRegression):
        document = {{
            "kind": "linear-classifier",
            "classes": [int(c) for c in estimator.classes_],
            "coef": estimator.coef_.tolist(),
            "intercept": estimator.intercept_.tolist(),
        }}
    else:
        document = {{"kind": "linear-regressor", "coef": estimator.coef_.tolist(), "intercept": float(estimator.intercept_)}}
    return document, estimator


def evaluate(estimator: Any, x: Any, y: Any) -> dict[str, float]:
    """The metrics the gate reads, on rows the model never saw."""
    predicted = estimator.predict(x)
    if isinstance(estimator, LogisticRegression):
        y = y.astype(int)
        return {{"accuracy": float(m.accuracy_score(y, predicted)), "f1_macro": float(m.f1_score(y, predicted, average="macro"))}}
    return {{
        "rmse": float(m.mean_squared_error(y, predicted) ** 0.5),
        "mae": float(m.mean_absolute_error(y, predicted)),
        "r2": float(m.r2_score(y, predicted)),
    }}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--{hp_name}", type=float, default={hp_value})
    args = parser.parse_args(argv)
    names, features, targets = read_dataset(os.environ["CD4ML_DATASET_URI"])
    x_train, x_test, y_train, y_test = split(features, targets, args.test_size, args.seed)
    document, estimator = fit(args, x_train, y_train)
    document["features"] = names
    data = json.dumps(document, sort_keys=True).encode()
    report = {{
        "metrics": evaluate(estimator, x_test, y_test),
        "model_file": "model.json",
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "train_rows": len(y_train),
        "test_rows": len(y_test),
    }}
    _save(data, "model.json")
    _save(json.dumps(report, indent=2).encode(), "metrics.json")
    print(json.dumps(report), file=sys.stderr)
    return 0


def _csv_texts(uri: str) -> list[str]:
    if not uri.startswith("gs://"):
        return [open(os.path.join(uri, n)).read() for n in sorted(os.listdir(uri)) if n.endswith(".csv")]
    bucket, _, prefix = uri[5:].partition("/")
    blobs = sorted(_client().list_blobs(bucket, prefix=prefix), key=lambda b: b.name)
    return [b.download_as_text() for b in blobs if b.name.endswith(".csv")]


def _save(data: bytes, name: str) -> None:
    target = os.environ["AIP_MODEL_DIR"].rstrip("/") + "/" + name
    if target.startswith("gs://"):
        bucket, _, path = target[5:].partition("/")
        _client().bucket(bucket).blob(path).upload_from_string(data)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


def _client() -> Any:
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("CLOUD_ML_PROJECT_ID", "local"), credentials=AnonymousCredentials())
    return storage.Client()


if __name__ == "__main__":
    sys.exit(main())
'''

_CONTAINER_TASK = """\
\"\"\"Train {name} on the run's snapshot in its own image; write the model and its held-out metrics to AIP_MODEL_DIR.

Vertex AI runs the manifest's training.container.command (it replaces the image's ENTRYPOINT) followed by the
manifest's args and each hyperparameter as ``--name=value``, with AIP_MODEL_DIR set (gs://…, or a local folder);
cd4ml adds CD4ML_DATASET_URI (the run's snapshot of data.source). The contract: exactly one ``model.*`` file, and
``metrics.json`` with {{"metrics": {{name: number}}, "model_sha256": sha256 of the model file}}.

The standard library only, so the image needs no pip install and builds in seconds: a ridge regression solved
exactly, Cloud Storage through its JSON API with the job's credentials from the metadata server (STORAGE_EMULATOR_HOST,
when set, is a local emulator: no credentials). Replace the estimator and the I/O with your libraries as you need.
\"\"\"

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import random
import sys
import urllib.parse
import urllib.request
from typing import Any

TARGET = "{target}"
_METADATA_TOKEN = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"


def read_dataset(uri: str) -> tuple[list[str], list[list[float]], list[float]]:
    \"\"\"Every CSV under the snapshot (gs:// prefix or local folder): feature names, features, targets.\"\"\"
    names: list[str] = []
    rows: list[list[float]] = []
    targets: list[float] = []
    for text in _csv_texts(uri):
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        if header[-1] != TARGET:
            raise ValueError(f"expected the last column to be {{TARGET!r}}, got {{header[-1]!r}}")
        names = header[:-1]
        for row in reader:
            rows.append([float(v) for v in row[:-1]])
            targets.append(float(row[-1]))
    if not rows:
        raise ValueError(f"no rows under {{uri}}")
    return names, rows, targets


def split(features: list[list[float]], targets: list[float], test_size: float, seed: int) -> Any:
    \"\"\"The held-out split: the same for every run with the same data and seed (make_golden.py uses it too).\"\"\"
    order = list(range(len(targets)))
    random.Random(seed).shuffle(order)
    cut = len(order) - math.ceil(test_size * len(order))
    train, test = order[:cut], order[cut:]
    return (
        [features[i] for i in train],
        [features[i] for i in test],
        [targets[i] for i in train],
        [targets[i] for i in test],
    )


def fit(x: list[list[float]], y: list[float], alpha: float) -> dict[str, Any]:
    \"\"\"Ridge regression with an intercept: (Xc'Xc + alpha I) w = Xc'yc on centred data, as serve.py reads it.\"\"\"
    n, d = len(x), len(x[0])
    x_mean = [sum(row[j] for row in x) / n for j in range(d)]
    y_mean = sum(y) / n
    xc = [[row[j] - x_mean[j] for j in range(d)] for row in x]
    a = [[sum(r[i] * r[j] for r in xc) + (alpha if i == j else 0.0) for j in range(d)] for i in range(d)]
    b = [sum(r[i] * (t - y_mean) for r, t in zip(xc, y, strict=True)) for i in range(d)]
    coef = _solve(a, b)
    intercept = y_mean - sum(c * m for c, m in zip(coef, x_mean, strict=True))
    return {{"kind": "linear-regressor", "coef": coef, "intercept": intercept}}


def predict(model: dict[str, Any], row: list[float]) -> float:
    return float(model["intercept"] + sum(c * v for c, v in zip(model["coef"], row, strict=True)))


def evaluate(model: dict[str, Any], x: list[list[float]], y: list[float]) -> dict[str, float]:
    \"\"\"The metrics the gate reads, on rows the model never saw.\"\"\"
    errors = [predict(model, row) - t for row, t in zip(x, y, strict=True)]
    mean = sum(y) / len(y)
    total = sum((t - mean) ** 2 for t in y)
    return {{
        "rmse": math.sqrt(sum(e * e for e in errors) / len(errors)),
        "mae": sum(abs(e) for e in errors) / len(errors),
        "r2": 1.0 - sum(e * e for e in errors) / total,
    }}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--{hp_name}", type=float, default={hp_value})
    args = parser.parse_args(argv)
    names, features, targets = read_dataset(os.environ["CD4ML_DATASET_URI"])
    x_train, x_test, y_train, y_test = split(features, targets, args.test_size, args.seed)
    model = fit(x_train, y_train, args.{hp_name})
    model["features"] = names
    data = json.dumps(model, sort_keys=True).encode()
    report = {{
        "metrics": evaluate(model, x_test, y_test),
        "model_file": "model.json",
        "model_sha256": hashlib.sha256(data).hexdigest(),
        "train_rows": len(y_train),
        "test_rows": len(y_test),
    }}
    _save(data, "model.json")
    _save(json.dumps(report, indent=2).encode(), "metrics.json")
    print(json.dumps(report), file=sys.stderr)
    return 0


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    \"\"\"Gaussian elimination with partial pivoting (a is symmetric positive definite for alpha > 0).\"\"\"
    d = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for col in range(d):
        pivot = max(range(col, d), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, d):
            factor = m[r][col] / m[col][col]
            for c in range(col, d + 1):
                m[r][c] -= factor * m[col][c]
    out = [0.0] * d
    for r in range(d - 1, -1, -1):
        out[r] = (m[r][d] - sum(m[r][c] * out[c] for c in range(r + 1, d))) / m[r][r]
    return out


def _csv_texts(uri: str) -> list[str]:
    if not uri.startswith("gs://"):
        return [open(os.path.join(uri, n)).read() for n in sorted(os.listdir(uri)) if n.endswith(".csv")]
    bucket, _, prefix = uri[5:].partition("/")
    names: list[str] = []
    page = ""
    while True:
        query = urllib.parse.urlencode({{"prefix": prefix, **({{"pageToken": page}} if page else {{}})}})
        listing = json.loads(_call("GET", f"/storage/v1/b/{{bucket}}/o?{{query}}"))
        names += [item["name"] for item in listing.get("items", [])]
        page = listing.get("nextPageToken", "")
        if not page:
            break
    return [
        _call("GET", f"/storage/v1/b/{{bucket}}/o/{{urllib.parse.quote(n, safe='')}}?alt=media").decode()
        for n in sorted(names)
        if n.endswith(".csv")
    ]


def _save(data: bytes, name: str) -> None:
    target = os.environ["AIP_MODEL_DIR"].rstrip("/") + "/" + name
    if target.startswith("gs://"):
        bucket, _, path = target[5:].partition("/")
        query = urllib.parse.urlencode({{"uploadType": "media", "name": path}})
        _call("POST", f"/upload/storage/v1/b/{{bucket}}/o?{{query}}", data)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(data)


def _call(method: str, path: str, data: bytes | None = None) -> bytes:
    \"\"\"One Cloud Storage JSON API call (https://cloud.google.com/storage/docs/json_api).\"\"\"
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    base = (emulator if "://" in emulator else f"http://{{emulator}}") if emulator else "https://storage.googleapis.com"
    headers = {{"Content-Type": "application/octet-stream"}} if data is not None else {{}}
    if not emulator:
        request = urllib.request.Request(_METADATA_TOKEN, headers={{"Metadata-Flavor": "Google"}})
        with urllib.request.urlopen(request, timeout=30) as response:
            headers["Authorization"] = "Bearer " + json.load(response)["access_token"]
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return bytes(response.read())


if __name__ == "__main__":
    sys.exit(main())
"""

_TRAINER_DOCKERFILE = """\
# The trainer image: the training script on a Python base, no pip install (it uses the standard library only).
# `cd4ml model push` builds this folder with Cloud Build and pushes training.container.image_uri.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
WORKDIR /opt
COPY __init__.py task.py /opt/trainer/
ENV PYTHONPATH=/opt PYTHONUNBUFFERED=1
ENTRYPOINT ["python3", "-m", "trainer.task"]
"""

_DOCKERFILE = """\
# The serving image: the model (its coefficients as JSON) and a standard-library HTTP server, no pip install.
# cd4ml's build passes BASE_IMAGE (serving.base_image) and puts the trained model at model/ in the context.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY model/ /opt/model/
COPY serve.py /opt/serve.py
ENV MODEL_PATH=/opt/model/model.json PORT=8080
EXPOSE 8080
CMD ["python3", "/opt/serve.py"]
"""

_SERVE = '''\
"""Serve the model with the contract cd4ml's smoke test checks: listen on $PORT; GET /health answers
{"model_sha256": sha256 of the model file}; POST /predict {"instances": [[numbers]]} answers {"predictions": [...]}.
"""

from __future__ import annotations

import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_PATH = os.environ.get("MODEL_PATH", "/opt/model/model.json")


def predict(model: dict[str, Any], row: list[float]) -> Any:
    """A linear model's prediction: the value (regressor), or the class with the highest score (classifier)."""
    if len(row) != len(model["features"]):
        raise ValueError(f"each instance needs {len(model['features'])} numbers")
    if model["kind"] == "linear-regressor":
        return model["intercept"] + sum(c * float(x) for c, x in zip(model["coef"], row, strict=True))
    scores = [b + sum(c * float(x) for c, x in zip(w, row, strict=True)) for w, b in zip(model["coef"], model["intercept"], strict=True)]
    if len(scores) == 1:  # binary: one score, positive means the second class
        return model["classes"][1] if scores[0] > 0 else model["classes"][0]
    return model["classes"][scores.index(max(scores))]


class Handler(BaseHTTPRequestHandler):
    model: dict[str, Any] = {}
    model_sha256 = ""

    def log_message(self, *_args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path != "/health":
            self._reply(404, {"error": f"no route {self.path}"})
            return
        self._reply(200, {"status": "ok", "model_sha256": Handler.model_sha256})

    def do_POST(self) -> None:
        if self.path != "/predict":
            self._reply(404, {"error": f"no route {self.path}"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            predictions = [predict(Handler.model, row) for row in body["instances"]]
        except (ValueError, KeyError, TypeError) as error:
            self._reply(400, {"error": f'expected {{"instances": [[numbers], ...]}}: {error}'})
            return
        self._reply(200, {"predictions": predictions})


if __name__ == "__main__":
    with open(MODEL_PATH, "rb") as f:
        raw = f.read()
    Handler.model, Handler.model_sha256 = json.loads(raw), hashlib.sha256(raw).hexdigest()
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
'''

_GOLDEN = '''\
"""Write serving/smoke.jsonl: golden requests from the held-out split the trainer evaluates on (never trained on).

Run it again whenever the data, the split (--test-size, --seed) or seed_data.py change.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROWS = 20


def write(target: Path, rows: int = ROWS) -> Path:
    sys.path.insert(0, str(HERE))
    from seed_data import write as seed
    from trainer.task import read_dataset, split

    manifest = yaml.safe_load((HERE / "manifest.yaml").read_text())
    args = dict(a.removeprefix("--").split("=", 1) for a in manifest["training"]["args"])
    with tempfile.TemporaryDirectory() as tmp:
        seed(Path(tmp))
        _, features, targets = read_dataset(tmp)
    _, held_out, _, truth = split(features, targets, float(args["test-size"]), int(args["seed"]))
    with target.open("w") as out:
        for row, value in zip(held_out[:rows], truth[:rows], strict=True):
            expected = int(value) if {classifier} else float(value)
            line = {{"request": {{"instances": [[float(v) for v in row]]}}, "expected": {{"predictions": [expected]}}}}
            out.write(json.dumps(line, separators=(",", ":")) + "\\n")
    return target


if __name__ == "__main__":
    print(write(HERE / "serving" / "smoke.jsonl"))
'''


def files(name: str, kind: str) -> dict[str, str]:
    """The template's files (path → text) for model ``name``."""
    t = TEMPLATES[kind]
    hp_name, hp_value = t.hyperparameter
    container = kind == "container"
    common = {
        "manifest.yaml": _MANIFEST.format(
            name=name,
            description=t.description,
            trainer=(_CONTAINER if container else _PYTHON_PACKAGE).format(name=name),
            hp_name=hp_name,
            hp_value=hp_value,
            evaluation=t.evaluation,
            smoke_extra=t.smoke_extra,
        ),
        "seed_data.py": _SEED.format(loader=t.loader, target=t.target),
        "make_golden.py": _GOLDEN.format(classifier=kind == "sklearn-classifier"),
        "trainer/__init__.py": "",
        "serving/Dockerfile": _DOCKERFILE,
        "serving/serve.py": _SERVE,
    }
    if container:
        return {
            **common,
            "trainer/Dockerfile": _TRAINER_DOCKERFILE,
            "trainer/task.py": _CONTAINER_TASK.format(name=name, target=t.target, hp_name=hp_name, hp_value=hp_value),
        }
    return {
        **common,
        "setup.py": _SETUP.format(name=name),
        "trainer/task.py": _TASK.format(
            name=name, target=t.target, estimator=t.estimator, hp_name=hp_name, hp_value=hp_value
        ),
    }


def create(name: str, kind: str, folder: Path) -> Path:
    """Write the template's folder for ``name`` and its golden requests; Cd4mlError naming what is wrong."""
    if not _NAME.match(name):
        raise Cd4mlError(
            f"model name {name!r}: use lowercase letters, digits and dashes, starting with a letter (at most 40)"
        )
    if kind not in TEMPLATES:
        raise Cd4mlError(f"no template {kind!r}: --template takes one of {', '.join(TEMPLATES)}")
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise Cd4mlError(f"{folder} exists and is not empty: choose another --dir, or remove it")
    try:
        _write(folder, name, kind)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no half-made folder to trip over
        raise
    return folder


def _write(folder: Path, name: str, kind: str) -> None:
    import subprocess

    for relative, text in files(name, kind).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    done = subprocess.run(
        [sys.executable, str(folder / "make_golden.py")], capture_output=True, text=True, timeout=300, cwd=folder
    )
    if done.returncode != 0:
        raise Cd4mlError(
            f"the golden requests could not be made (make_golden.py needs scikit-learn and PyYAML here): "
            f"{' '.join(done.stderr.split()[-25:])}"
        )
    for cache in folder.rglob("__pycache__"):
        for file in cache.iterdir():
            file.unlink()
        cache.rmdir()
