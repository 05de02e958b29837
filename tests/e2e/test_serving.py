"""The delivered image serves the trained model: run it from the registry, ask /health and /predict.

The reference predictions come from the run's model artifact loaded with joblib in the model's training
environment (the local Vertex stand-in's environment for the manifest's executor image): a scikit-learn
1.6.1 pickle loaded by another version (the test interpreter's) can predict differently, which is the
very mistake this test exists to catch in the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_emulator import containers
from local_emulator.common import processes
from local_emulator.vertex.envs import default_cache_dir, trainer_env
from local_emulator.vertex.images import executor_image

from cd4ml import clients
from tests.e2e.conftest import EXAMPLE, Pipeline

# Run by the training interpreter: the held-out split by the trainer's own code, and the model's predictions.
_REFERENCE = """
import json, sys
import joblib
from trainer.data import read_dataset, split
features, labels = read_dataset(sys.argv[2])
_, rows, _, expected = split(features, labels, float(sys.argv[3]), int(sys.argv[4]))
model = joblib.load(sys.argv[1])
print(json.dumps({"rows": rows.tolist(), "labels": expected.tolist(), "predictions": model.predict(rows).tolist()}))
"""


def _download(pipeline: Pipeline, uri: str, target: Path) -> Path:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    clients.storage_client(pipeline.settings).bucket(bucket).blob(name).download_to_filename(str(target))
    return target


def _reference(pipeline: Pipeline, run: dict[str, Any], tmp: Path) -> dict[str, list[Any]]:
    """Held-out rows, labels and the model's own predictions, computed where the model was trained."""
    manifest = yaml.safe_load((EXAMPLE / "manifest.yaml").read_text())
    model = _download(pipeline, run["model_artifact"]["uri"], tmp / "model.joblib")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == run["model_artifact"]["sha256"]
    package = manifest["training"]["python_package"]
    trainer = [
        _download(pipeline, f"gs://{pipeline.settings.artifact_bucket}/{uri}", tmp / Path(uri).name)
        for uri in package["package_uris"]
    ]
    # the Vertex stand-in's environment for this executor image and package: built by the run, reused here
    env = trainer_env(
        default_cache_dir(), executor_image(package["executor_image"]), trainer, log=tmp / "env.log", environ=os.environ
    )
    args = dict(arg.removeprefix("--").split("=", 1) for arg in manifest["training"]["args"])
    done = subprocess.run(
        [str(env.python), "-c", _REFERENCE, str(model), run["dataset"]["uri"], args["test-size"], args["seed"]],
        env={"PATH": os.environ["PATH"], "STORAGE_EMULATOR_HOST": pipeline.env["STORAGE_EMULATOR_HOST"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    reference: dict[str, list[Any]] = json.loads(done.stdout)
    return reference


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def delivered(pipeline: Pipeline) -> dict[str, Any]:
    run = pipeline.wait(pipeline.request("digits"))
    assert run["status"] == "succeeded", run.get("error")
    return run


@pytest.fixture(scope="module")
def serving(delivered: dict[str, Any], pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The pushed image running on a free port (its CMD, PORT set as Cloud Run would); stopped by pid afterwards.
    Pulled as the project's owner would (the registry has token auth)."""
    creds = pipeline.registry_creds()
    tmp = tmp_path_factory.mktemp("serving")
    port = processes.free_port()
    log = tmp / "serve.log"
    started = time.monotonic()
    container = containers.start(
        delivered["image"]["reference"], None, {"PORT": str(port)}, state_dir=tmp, log=log, creds=creds
    )
    try:
        url = f"http://127.0.0.1:{port}"
        processes.wait_until(
            lambda: _get(f"{url}/health")["status"] == "ok",
            what="serving image",
            timeout=180,
            pid=container.pid,
            log=log,
        )
        print(f"serving image answered /health {time.monotonic() - started:.1f} s after start")
        yield url
    finally:
        container.stop()


def test_health_reports_the_sha256_of_the_model_the_run_trained(serving: str, delivered: dict[str, Any]) -> None:
    assert _get(f"{serving}/health") == {"status": "ok", "model_sha256": delivered["model_artifact"]["sha256"]}


def test_predict_answers_the_held_out_rows_as_the_trained_model_does(
    pipeline: Pipeline, serving: str, delivered: dict[str, Any], tmp_path: Path
) -> None:
    reference = _reference(pipeline, delivered, tmp_path)

    status, answer = _post(f"{serving}/predict", {"instances": reference["rows"]})

    assert status == 200, answer
    assert len(reference["rows"]) == 450  # a quarter of the 1797 digits (--test-size=0.25)
    assert answer["predictions"] == reference["predictions"]
    # the rows are the held-out split the trainer scored: the image's accuracy is the one recorded on the run
    correct = sum(p == label for p, label in zip(answer["predictions"], reference["labels"], strict=True))
    assert correct / len(reference["labels"]) == pytest.approx(
        delivered["evaluation"]["metrics"]["accuracy"], abs=1e-12
    )


def test_predict_refuses_rows_of_the_wrong_width_with_a_reason(serving: str) -> None:
    status, answer = _post(f"{serving}/predict", {"instances": [[0.0, 1.0]]})
    assert status == 400
    assert "64" in answer["error"]
