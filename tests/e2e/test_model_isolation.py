"""A model can only touch itself: a build running as model A's own build account (as build_image submits it) is
refused when it pushes model B's repository, through the stack's Cloud Build stand-in and its token-auth registry."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from typing import Any

from cd4ml import clients, identities
from cd4ml.settings import Settings
from tests.e2e.conftest import Pipeline

DOCKER = "gcr.io/cloud-builders/docker"


def _context(pipeline: Pipeline, run_id: str) -> str:
    """A tiny build context under builds/RUN_ID/, where build_image puts one."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {
            "Dockerfile": b"FROM python:3.11-slim\nCOPY model.txt /opt/model.txt\n",
            "model.txt": b"m",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    name = f"builds/{run_id}/context.tar.gz"
    pipeline.storage.bucket(pipeline.settings.artifact_bucket).blob(name).upload_from_string(buffer.getvalue())
    return name


def _build_as(pipeline: Pipeline, model: str, image_model: str, context_model: str = "") -> Any:
    """Submit, as model ``model``'s build account, a build of a context under ``context_model``'s runs (its own by
    default) that pushes into ``image_model``'s repository."""
    from google.cloud.devtools import cloudbuild_v1 as cb

    settings: Settings = pipeline.settings
    run_id = f"{context_model or model}-20260101t{int(time.time()) % 1000000:06d}z"
    image = f"{identities.image_repository(settings.registry, image_model)}:{run_id}"
    account = identities.service_account(settings.build_service_account, "build", model)
    build = cb.Build(
        source=cb.Source(
            storage_source=cb.StorageSource(bucket=settings.artifact_bucket, object_=_context(pipeline, run_id))
        ),
        steps=[cb.BuildStep(name=DOCKER, args=["build", "-t", image, "."])],
        images=[image],
        tags=[f"isolation-{uuid.uuid4().hex[:8]}"],
        service_account=f"projects/{settings.project}/serviceAccounts/{account}",
        options=cb.BuildOptions(logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
    )
    builds = clients.cloud_build_client(settings)
    build_id = builds.create_build(project_id=settings.project, build=build).metadata.build.id
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        found = builds.get_build(project_id=settings.project, id=build_id)
        if found.status.name not in ("QUEUED", "WORKING"):
            return found
        time.sleep(1.0)
    raise AssertionError(f"build {build_id} did not finish")


def test_model_as_build_pushing_to_model_bs_repository_is_refused(pipeline: Pipeline) -> None:
    refused = _build_as(pipeline, "alpha", "beta")
    assert refused.status.name == "FAILURE"
    assert refused.failure_info.type_.name == "PUSH_FAILED"
    assert "failed to push" in refused.status_detail and "cd4ml-beta/beta" in refused.status_detail
    assert "unauthorized" in refused.status_detail.lower() or "denied" in refused.status_detail.lower()

    own = _build_as(pipeline, "alpha", "alpha")  # the same account, its own model's repository
    assert own.status.name == "SUCCESS", own.status_detail
    assert own.results.images[0].name.startswith(identities.image_repository(pipeline.settings.registry, "alpha"))


def test_model_as_build_cannot_fetch_model_bs_build_context(pipeline: Pipeline) -> None:
    refused = _build_as(pipeline, "alpha", "alpha", context_model="beta")
    assert refused.status.name == "FAILURE"
    assert refused.failure_info.type_.name == "FETCH_SOURCE_FAILED"
    assert "builds/beta-" in refused.status_detail and "403" in refused.status_detail
