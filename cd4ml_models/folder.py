"""Adding a model: validate its manifest, then upload the manifest and its trainer package to the artifact bucket.

A model project is a folder with ``manifest.yaml`` and, for Python package training, a ``setup.py``
trainer package; ``cd4ml model push FOLDER`` does what this module does.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cd4ml.errors import InvalidManifest
from cd4ml.gcs import GcsPath
from cd4ml.manifest import Manifest, loads, manifest_object, resolve_gcs
from cd4ml.smoke import read_golden

if TYPE_CHECKING:
    from google.cloud import storage

    from cd4ml.settings import Settings
    from cd4ml_models.trainer_image import TrainerImage

MANIFEST = "manifest.yaml"
_SKIP = {"__pycache__", ".pytest_cache", ".git", "serving", "data", "build", "dist"}


@dataclass(frozen=True)
class Pushed:
    """What a push uploaded."""

    manifest: Manifest
    manifest_uri: str
    package_uri: str | None
    trainer_image: TrainerImage | None = None


def read(folder: Path) -> Manifest:
    """The folder's manifest, validated; InvalidManifest names each bad field."""
    file = folder / MANIFEST
    if not file.is_file():
        raise InvalidManifest(f"no {MANIFEST} in {folder}")
    manifest = loads(file.read_text(), origin=str(file))
    outside = _outside(folder, manifest)
    if outside:
        raise InvalidManifest(f"invalid {folder}: a push uploads only what is inside the model folder", outside)
    trainer = manifest.training.container_dockerfile
    if trainer and not (folder / trainer).is_file():
        raise InvalidManifest(
            f"invalid {file}", [f"training.container.dockerfile: {trainer} does not exist in {folder}"]
        )
    if not (folder / manifest.dockerfile).is_file():
        raise InvalidManifest(
            f"invalid {file}", [f"serving.dockerfile: {manifest.dockerfile} does not exist in {folder}"]
        )
    if manifest.smoke is not None:
        golden = folder / manifest.smoke.requests
        try:
            read_golden(golden.read_text())
        except (OSError, ValueError) as bad:
            raise InvalidManifest(f"invalid {file}", [f"serving.smoke.requests: {golden}: {bad}"]) from bad
    return manifest


def check(folder: Path) -> Manifest:
    """``read``, then what else can be known before a run: the executor image is one Vertex AI offers, the module
    is in the trainer package, the serving folder holds what the manifest names. InvalidManifest names each."""
    manifest = read(folder)
    file = folder / MANIFEST
    problems = _executor_problems(manifest) + _module_problems(folder, manifest)
    if problems:
        raise InvalidManifest(f"invalid {file}", problems)
    return manifest


def _executor_problems(manifest: Manifest) -> list[str]:
    """A Python package job runs only on Vertex AI's prebuilt training containers (their list and its source:
    local_emulator/vertex/images.py)."""
    if not manifest.training.executor_image:
        return []
    try:
        from local_emulator.vertex.images import UnknownExecutorImage, executor_image
    except ImportError:  # installed without the local stack: Vertex says so at the first run
        return []
    try:
        executor_image(manifest.training.executor_image)
    except UnknownExecutorImage as unknown:
        return [f"training.python_package.executor_image: {unknown}"]
    return []


def _module_problems(folder: Path, manifest: Manifest) -> list[str]:
    """The module Vertex runs (``python -m MODULE``) must be in the package ``model push`` builds from the folder."""
    module = manifest.training.python_module
    if not module or not (folder / "setup.py").is_file():
        return []  # a container job, or a package built elsewhere: nothing here to look into
    relative = module.replace(".", "/")
    packaged = {p.relative_to(folder).as_posix() for p in _packaged(folder)}
    if f"{relative}.py" in packaged or f"{relative}/__main__.py" in packaged:
        return []
    return [
        f"training.python_package.python_module: {module} is not in the trainer package (no {relative}.py under "
        f"{folder}, beside setup.py); Vertex AI runs `python -m {module}`"
    ]


def _outside(folder: Path, manifest: Manifest) -> list[str]:
    """What a push would take from outside ``folder``: a serving path leading out of it (``../``, an absolute path)
    or a symlink resolving out of it (a push must never upload a home directory or a key)."""
    root = folder.resolve()
    problems = []
    named = {"serving.dockerfile": manifest.dockerfile}
    if manifest.training.container_dockerfile:
        named["training.container.dockerfile"] = manifest.training.container_dockerfile
    if manifest.smoke is not None:
        named["serving.smoke.requests"] = manifest.smoke.requests
    for field, relative in named.items():
        if not (folder / relative).resolve().is_relative_to(root):
            problems.append(f"{field}: {relative} leads outside {folder}")
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            problems.append(f"{path.relative_to(folder)} is a symlink to {path.resolve()}, outside {folder}")
    return problems


def _packaged(folder: Path) -> list[Path]:
    """The files of the trainer package, sorted: no serving files, data, build leftovers or bytecode."""
    return [
        path
        for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
        if path.is_file()
        and not _SKIP & set(path.relative_to(folder).parts)
        and not any(part.endswith(".egg-info") for part in path.relative_to(folder).parts)
        and path.suffix != ".pyc"
        and path.relative_to(folder).as_posix() != MANIFEST
    ]


def sdist(folder: Path, name: str) -> bytes:
    """A source distribution (tar.gz with setup.py) of the folder's trainer package, as pip installs it.

    Byte for byte the same for the same source (entries sorted; mtimes, owners and modes fixed; a gzip header
    without a time or file name), so its md5 (the training cache key's package hash) changes only with the source.
    """
    root = name.removesuffix(".tar.gz")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _packaged(folder):
            info = tarfile.TarInfo(f"{root}/{path.relative_to(folder).as_posix()}")
            data = path.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if path.stat().st_mode & 0o111 else 0o644
            info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def push(client: storage.Client, folder: Path, artifact_bucket: str, settings: Settings | None = None) -> Pushed:
    """Validate, build and push the trainer image (``training.container.dockerfile``, with Cloud Build: needs
    ``settings``), then upload the trainer package (when the folder has a setup.py), the serving files and, last,
    the manifest: a failed image build leaves the model as it was."""
    manifest = check(folder)
    trainer = None
    if manifest.training.container_dockerfile:
        from cd4ml_models import trainer_image

        if settings is None:
            raise InvalidManifest(f"{folder}: building its trainer image needs the deployment's settings")
        trainer = trainer_image.push(settings, client, folder, manifest)
    package_uri = None
    if manifest.training.package_uris and (folder / "setup.py").is_file():
        package = GcsPath.parse(resolve_gcs(manifest.training.package_uris[0], artifact_bucket))
        client.bucket(package.bucket).blob(package.name).upload_from_string(
            sdist(folder, package.name.rsplit("/", 1)[-1]), content_type="application/gzip"
        )
        package_uri = package.uri
    serving = (folder / manifest.dockerfile).parent
    for path in sorted(serving.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            name = f"serving/{manifest.name}/{path.relative_to(serving)}"
            client.bucket(artifact_bucket).blob(name).upload_from_filename(str(path))
    target = GcsPath(artifact_bucket, manifest_object(manifest.name))
    client.bucket(target.bucket).blob(target.name).upload_from_string(
        (folder / MANIFEST).read_text(), content_type="application/yaml"
    )
    return Pushed(manifest=manifest, manifest_uri=target.uri, package_uri=package_uri, trainer_image=trainer)
