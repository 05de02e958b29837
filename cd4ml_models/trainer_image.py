"""A container trainer's image, built and pushed by ``cd4ml model push`` as a team would with Cloud Build.

What ``gcloud builds submit --tag IMAGE DIR`` does (https://cloud.google.com/sdk/gcloud/reference/builds/submit): the
folder of ``training.container.dockerfile`` goes to Cloud Storage as a tar.gz, one ``docker build`` step builds it,
``images: [IMAGE]`` pushes it once the step succeeded. IMAGE is ``training.container.image_uri`` with ``{registry}``
the model's own repository, and the build runs as the model's own build account (the only one that may push
there), so a model's trainer image can replace no other model's. The source goes under ``builds/MODEL-`` in the
artifact bucket, the one prefix that account may read. A run pins the tag to its digest when it submits the job.
A push of the same source as the last successful build's builds nothing (the object's metadata names its image).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cd4ml import clients, identities
from cd4ml.errors import Cd4mlError
from cd4ml.manifest import REGISTRY_PLACEHOLDER, Manifest
from cd4ml.settings import Settings

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
_DONE = {"SUCCESS", "FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}
_SKIP = {"__pycache__", ".pytest_cache", ".git"}
_POLL_S = 1.0
#: The source object's metadata after a successful build: what it pushed, by tag and digest, and the build.
_IMAGE, _DIGEST, _BUILD = "cd4ml-image", "cd4ml-image-digest", "cd4ml-build-id"


@dataclass(frozen=True)
class TrainerImage:
    """What a push built: the image by tag and by digest, and the Cloud Build build that made it."""

    reference: str
    digest: str
    build_id: str
    reused: bool = False  # the same source as the last successful build's: not built again


def reference(registry: str, manifest: Manifest) -> str:
    """``training.container.image_uri`` with ``{registry}`` the model's own repository."""
    image = manifest.training.container_image
    return identities.model_registry(registry, manifest.name) + image.removeprefix(REGISTRY_PLACEHOLDER)


def source_object(model: str) -> str:
    """Where the build's source goes in the artifact bucket (the model's build account reads ``builds/MODEL-``)."""
    return f"builds/{model}-trainer/source.tar.gz"


def context(folder: Path) -> bytes:
    """The Dockerfile's folder as a tar.gz, the same bytes for the same files (sorted, fixed mtimes and owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
            parts = set(path.relative_to(folder).parts)
            if not path.is_file() or parts & _SKIP or path.suffix == ".pyc":
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mtime, info.mode = len(data), 0, 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue()


def build_request(settings: Settings, manifest: Manifest, image: str, generation: int) -> Any:
    """The Cloud Build build: the source at ``generation``, ``docker build -t IMAGE -f DOCKERFILE .``, the image
    pushed when the step succeeded, as the model's build account when the deployment names one."""
    from datetime import timedelta

    from google.cloud.devtools import cloudbuild_v1 as cb

    build = cb.Build(
        source=cb.Source(
            storage_source=cb.StorageSource(
                bucket=settings.artifact_bucket, object_=source_object(manifest.name), generation=generation or None
            )
        ),
        timeout=timedelta(minutes=20),
        steps=[
            cb.BuildStep(
                name=DOCKER_BUILDER,
                args=["build", "-t", image, "-f", Path(manifest.training.container_dockerfile).name, "."],
            )
        ],
        images=[image],
        tags=["cd4ml-trainer", f"cd4ml-model-{manifest.name}"],
    )
    if settings.build_service_account:
        account = identities.service_account(settings.build_service_account, "build", manifest.name)
        build.service_account = f"projects/{settings.project}/serviceAccounts/{account}"
        build.options = cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY)
    return build


def push(settings: Settings, storage: Any, folder: Path, manifest: Manifest, timeout: float = 900.0) -> TrainerImage:
    """Build ``training.container.dockerfile``'s folder with Cloud Build and push the image; Cd4mlError naming the
    build and why when it does not succeed."""
    if not settings.registry:
        raise Cd4mlError("a trainer image needs CD4ML_REGISTRY (terraform output registry) to push to")
    image = reference(settings.registry, manifest)
    source = context((folder / manifest.training.container_dockerfile).parent)
    bucket = storage.bucket(settings.artifact_bucket)
    built = _built_from(bucket.get_blob(source_object(manifest.name)), source, image)
    if built is not None:
        return built
    blob = bucket.blob(source_object(manifest.name))
    blob.upload_from_string(source, content_type="application/gzip")
    builds = clients.cloud_build_client(settings)
    operation = builds.create_build(
        project_id=settings.project,
        build=build_request(settings, manifest, image, int(blob.generation or 0)),
        timeout=clients.CALL_SECONDS,
    )
    build_id = operation.metadata.build.id
    deadline = time.monotonic() + timeout
    while True:
        build = builds.get_build(project_id=settings.project, id=build_id, timeout=clients.CALL_SECONDS)
        status = build.status.name
        if status in _DONE:
            break
        if time.monotonic() > deadline:
            raise Cd4mlError(f"the trainer image build {build_id} did not end within {timeout:g} s ({status})")
        time.sleep(_POLL_S)
    if status != "SUCCESS":
        raise Cd4mlError(
            f"the trainer image build {build_id} ended {status}: {build.status_detail or 'no detail'}"
            + (f"; its log: {build.log_url}" if build.log_url else "")
        )
    digest = build.results.images[0].digest if build.results.images else ""
    blob.metadata = {_IMAGE: image, _DIGEST: digest, _BUILD: build_id}
    blob.patch()  # the next push of the same source reuses this image (and so the runs' training cache)
    return TrainerImage(reference=image, digest=digest, build_id=build_id)


def _built_from(blob: Any, source: bytes, image: str) -> TrainerImage | None:
    """The image the last successful build of this very source pushed as ``image``; None when the source changed
    (or never built): an image build is not byte-reproducible (layer times), so building unchanged source again
    would give a new digest and retrain every run."""
    if blob is None or blob.md5_hash != base64.b64encode(hashlib.md5(source).digest()).decode():
        return None
    recorded = blob.metadata or {}
    if recorded.get(_IMAGE) != image or not recorded.get(_DIGEST):
        return None
    return TrainerImage(reference=image, digest=recorded[_DIGEST], build_id=recorded.get(_BUILD, ""), reused=True)
