"""Inputs stay in their lane and within bounds: a push takes nothing from outside the model folder, a manifest is
run only as the model it is stored for, records stay far below Firestore's 1 MiB, builds are bounded and fetch
the context that was checked, snapshots copy the generation that was hashed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from cd4ml_models import folder as models

from cd4ml import events
from cd4ml.errors import InvalidManifest
from cd4ml.events import Event
from cd4ml.gcs import GcsPath
from cd4ml.manifest import MAX_MANIFEST_BYTES, loads
from cd4ml.payloads import Artifact
from cd4ml.stages import delivery, evaluation, fetch
from tests.stagekit import Kit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return folder


def test_a_push_refuses_a_dockerfile_outside_the_model_folder(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    doc = yaml.safe_load((folder / "manifest.yaml").read_text())
    doc["serving"]["dockerfile"] = "../Dockerfile"
    (folder / "manifest.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidManifest, match=r"serving.dockerfile: ../Dockerfile leads outside"):
        models.read(folder)


def test_a_push_refuses_a_symlink_out_of_the_model_folder(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (folder / "serving" / "key").symlink_to(secret)
    with pytest.raises(InvalidManifest) as refused:
        models.read(folder)
    assert f"serving/key is a symlink to {secret}, outside {folder}" in refused.value.message
    (folder / "serving" / "key").unlink()
    (folder / "serving" / "inside").symlink_to(folder / "serving" / "Dockerfile")  # inside the folder: fine
    assert models.read(folder).name == "digits"


def test_a_manifest_over_64_kib_is_refused_with_its_size() -> None:
    text = (EXAMPLE / "manifest.yaml").read_text() + "# " + "x" * MAX_MANIFEST_BYTES + "\n"
    with pytest.raises(InvalidManifest, match=r"bytes: a manifest is at most 65536 bytes"):
        loads(text)


def test_a_manifest_stored_under_another_models_name_is_refused() -> None:
    kit = Kit("fetch_data")
    doc = yaml.safe_load((EXAMPLE / "manifest.yaml").read_text())
    kit.storage.put("artifacts", "manifests/fraud.yaml", yaml.safe_dump(doc).encode())  # says name: digits
    with pytest.raises(InvalidManifest, match=r"name: 'digits' is not 'fraud', the model it is stored for"):
        fetch.load_manifest(kit.ctx, "fraud", None)
    kit.storage.put("artifacts", "manifests/digits.yaml", yaml.safe_dump(doc).encode())
    assert fetch.load_manifest(kit.ctx, "digits", None).name == "digits"


ARTIFACT = Artifact(uri="gs://artifacts/runs/r/model/model.joblib", sha256="a" * 64)


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        ({f"m{n}": 0.5 for n in range(101)}, "at most 100 metrics"),
        ({"accuracy": float("nan")}, "with a finite number"),
        ({"a" * 65: 0.5}, "bad names"),
    ],
)
def test_metrics_beyond_their_bounds_are_refused_with_the_reason(metrics: dict[str, float], problem: str) -> None:
    text = json.dumps({"metrics": metrics, "model_sha256": ARTIFACT.sha256})
    found, problems = evaluation.read_metrics(text, ARTIFACT)
    assert found == {} and problem in problems[0]


def test_a_metrics_file_too_large_is_refused_without_parsing() -> None:
    text = json.dumps({"metrics": {"accuracy": 0.9}, "model_sha256": ARTIFACT.sha256, "pad": "x" * 70_000})
    found, problems = evaluation.read_metrics(text, ARTIFACT)
    assert found == {} and "a metrics file is at most 65536" in problems[0]
    assert evaluation.read_metrics(json.dumps({"metrics": {"accuracy": 0.9}, "model_sha256": "a" * 64}), ARTIFACT)[
        0
    ] == {"accuracy": 0.9}


def test_a_build_is_bounded_in_time_and_fetches_the_context_generation_that_was_checked() -> None:
    kit = Kit("build_image", registry="registry.test/cd4ml")
    manifest = models.read(EXAMPLE)
    source = GcsPath("artifacts", "builds/r/context.tar.gz")
    build = delivery.build_request(kit.ctx, manifest, "digits-20300101t030000z", source, "a" * 64, 1234)
    assert build.source.storage_source.generation == 1234
    assert build.timeout.total_seconds() == 20 * 60


def test_a_clearance_for_a_run_the_ledger_does_not_know_is_dead_lettered() -> None:
    kit = Kit("build_image")
    cleared = Event.new(
        events.DELIVERY_CLEARED,
        "digits-20300101t030000z",
        {"model": "digits", "model_artifact": ARTIFACT.to_dict(), "metrics": {"accuracy": 0.9}},
        source="//t",
    )
    kit.deliver(delivery.build_image, cleared)
    [dead] = kit.bus.dead_letters
    assert "which the ledger does not know" in dead.error


def test_a_snapshot_copies_the_generation_it_hashed_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core.exceptions import NotFound

    from cd4ml import snapshot

    kit = Kit("fetch_data")
    kit.storage.put("data", "sources/digits/a.csv", b"x,label\n1,0\n")
    from cd4ml import gcs

    hashed = gcs.digest

    def then_replaced(client: object, path: GcsPath, generation: int | None = None) -> object:
        found = hashed(client, path, generation)
        kit.storage.put("data", path.name, b"x,label\n9,9\n")  # an upload lands between the hash and the copy
        return found

    monkeypatch.setattr(snapshot, "digest", then_replaced)
    with pytest.raises(NotFound):  # retryable: the next delivery hashes and copies the new data together
        snapshot.take(kit.storage, "gs://data/sources/digits/", "data", "digits")
    assert not [name for (_, name) in kit.storage.objects if name.startswith("datasets/")]
