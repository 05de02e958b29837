"""A container trainer of the model's own: the manifest's rules, the pin a run makes, the build a push submits."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from cd4ml_cli import templates
from cd4ml_models import trainer_image

from cd4ml import cache, registry
from cd4ml.errors import InvalidManifest, PermanentError
from cd4ml.manifest import Manifest, parse
from cd4ml.stages.training import with_trainer_image
from tests import stagekit

DIGESTS = {"latest": "sha256:" + "a" * 64, "v2": "sha256:" + "b" * 64}


def _manifest(**container: Any) -> Manifest:
    document = yaml.safe_load(templates.files("churn", "container")["manifest.yaml"])
    document["training"]["container"] = {"command": ["python3", "-m", "trainer.task"], **container}
    return parse(document)


def _ctx(registry_setting: str = "registry.test/cd4ml-{model}") -> Any:
    return SimpleNamespace(settings=stagekit.settings("submit_training", registry=registry_setting))


@pytest.fixture
def tags(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    asked: list[tuple[str, str]] = []

    def digest(self: registry.RegistryClient, repo: registry.Repository, tag: str) -> str | None:
        asked.append((f"{repo.host}/{repo.path}", tag))
        return DIGESTS.get(tag)

    monkeypatch.setattr(registry.RegistryClient, "digest", digest)
    return asked


def test_a_run_pins_a_trainer_tag_of_the_models_repository_so_the_cache_key_follows_the_image(
    tags: list[tuple[str, str]],
) -> None:
    latest = with_trainer_image(_ctx(), _manifest(image_uri="{registry}/churn-trainer:latest"))
    assert latest.training.container_image == f"registry.test/cd4ml-churn/churn-trainer@{DIGESTS['latest']}"
    assert tags == [("registry.test/cd4ml-churn/churn-trainer", "latest")]
    moved = with_trainer_image(_ctx(), _manifest(image_uri="{registry}/churn-trainer:v2"))
    assert cache.training_spec(latest) != cache.training_spec(moved)  # a new image trains anew
    untagged = with_trainer_image(_ctx(), _manifest(image_uri="{registry}/churn-trainer"))
    assert untagged.training.container_image.endswith(f"@{DIGESTS['latest']}")  # Docker's default tag


def test_another_registrys_image_runs_as_written_and_is_never_asked_about(tags: list[tuple[str, str]]) -> None:
    # Sending the deployment's token to a registry that is not the project's would leak it: no lookup at all.
    written = "docker.io/library/python:3.11-slim"
    assert with_trainer_image(_ctx(), _manifest(image_uri=written)).training.container_image == written
    assert tags == []


def test_a_trainer_image_never_pushed_fails_the_run_naming_the_push(tags: list[tuple[str, str]]) -> None:
    with pytest.raises(PermanentError, match=r"churn-trainer:nope does not exist: `cd4ml model push FOLDER`"):
        with_trainer_image(_ctx(), _manifest(image_uri="{registry}/churn-trainer:nope"))
    with pytest.raises(PermanentError, match="needs CD4ML_REGISTRY"):
        with_trainer_image(_ctx(""), _manifest(image_uri="{registry}/churn-trainer:latest"))


def test_the_manifest_builds_only_into_the_models_own_repository_from_inside_its_folder() -> None:
    with pytest.raises(InvalidManifest) as outside:
        _manifest(image_uri="us-docker.pkg.dev/p/shared/trainer:1", dockerfile="trainer/Dockerfile")
    assert "must start with {registry}/ when training.container.dockerfile is set" in str(outside.value.problems)
    with pytest.raises(InvalidManifest) as escaping:
        _manifest(image_uri="{registry}/churn-trainer", dockerfile="../other/Dockerfile")
    assert "must be a path inside the model folder" in str(escaping.value.problems)
    with pytest.raises(InvalidManifest) as misplaced:
        _manifest(image_uri="us-docker.pkg.dev/{registry}/x")
    assert "{registry} may only begin the reference" in str(misplaced.value.problems)


def test_a_push_builds_the_trainer_folder_as_the_models_build_account_and_pushes_only_on_success(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "trainer"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (folder / "task.py").write_text("print('hi')\n")
    (folder / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\0")
    packed = trainer_image.context(folder)
    (folder / "task.py").touch()  # a newer mtime, the same content: the same bytes (no new source object)
    assert trainer_image.context(folder) == packed
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        assert tar.getnames() == ["Dockerfile", "task.py"]
    settings = stagekit.settings(
        "", registry="registry.test/cd4ml-{model}", build_service_account="{account}@p.iam.gserviceaccount.com"
    )
    manifest = _manifest(image_uri="{registry}/churn-trainer:latest", dockerfile="trainer/Dockerfile")
    image = trainer_image.reference(settings.registry, manifest)
    build = trainer_image.build_request(settings, manifest, image, 17)
    assert image == "registry.test/cd4ml-churn/churn-trainer:latest"
    assert list(build.images) == [image]  # pushed once every step succeeded (Artifacts.images)
    assert list(build.steps[0].args) == ["build", "-t", image, "-f", "Dockerfile", "."]
    assert build.source.storage_source.object_ == "builds/churn-trainer/source.tar.gz"  # builds/MODEL-: its account
    assert build.source.storage_source.generation == 17
    assert build.service_account == "projects/cd4ml-unit/serviceAccounts/cd4ml-build-churn@p.iam.gserviceaccount.com"
    assert build.options.logging.name == "CLOUD_LOGGING_ONLY"  # required with a user-specified account
