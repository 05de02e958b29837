"""The local Cloud Build, driven through the unchanged `cloudbuild_v1.CloudBuildClient` over gRPC.

Unmarked tests cover the pure parts (docker arguments, substitutions, ListBuilds filters). Tests marked
`emulator` start the Pub/Sub and GCS emulators, the local registry and the local Cloud Build (which makes
its Debian base image on first use, ~10 s, cached in ~/.cache/cd4ml/baseimage) and really build and push.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud.devtools import cloudbuild_v1
from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import CloudBuildGrpcTransport
from local_emulator import processes
from local_emulator._build_buildah import qualified
from local_emulator._build_steps import (
    DockerBuild,
    DockerPush,
    DockerTag,
    StepError,
    parse_docker_step,
    parse_filter,
    substitute,
)
from local_emulator.cloudbuild import build_id_of_operation, invalid_build, operation_name

PROJECT = "cloudbuild-test"
DOCKER = "gcr.io/cloud-builders/docker"
PUBSUB_EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")
Status = cloudbuild_v1.Build.Status
FailureType = cloudbuild_v1.Build.FailureInfo.FailureType


def test_docker_build_arguments_become_buildah_options() -> None:
    command = parse_docker_step(
        f"{DOCKER}:latest",
        "",
        [
            "build",
            "-t",
            "r/a:1",
            "--tag=r/a:2",
            "-f",
            "ci/Dockerfile",
            "--build-arg",
            "X=1",
            "--no-cache",
            "--network=host",
            "ctx",
        ],
    )
    assert command == DockerBuild(("r/a:1", "r/a:2"), "ci/Dockerfile", "ctx", ("--build-arg", "X=1"))


def test_tag_and_push_steps_and_what_is_refused() -> None:
    assert parse_docker_step(DOCKER, "", ["tag", "a", "b"]) == DockerTag("a", "b")
    assert parse_docker_step("docker", "docker", ["push", "a"]) == DockerPush("a")
    for name, entrypoint, args in [
        ("gcr.io/cloud-builders/gcloud", "", ["version"]),
        (DOCKER, "bash", ["-c", "true"]),
        (DOCKER, "", ["run", "x"]),
        (DOCKER, "", ["build", "--squash", "."]),
        (DOCKER, "", ["build", "-t", "x"]),
    ]:
        with pytest.raises(StepError):
            parse_docker_step(name, entrypoint, args)


def test_substitutions_follow_cloud_build_syntax() -> None:
    values = {"PROJECT_ID": "p", "_RUN": "r1"}
    assert substitute("reg/$PROJECT_ID/m:${_RUN}-$$HOME-$UNKNOWN", values) == "reg/p/m:r1-$HOME-$UNKNOWN"


def test_list_filter_subset() -> None:
    fields = {"tags": ["run-1", "model-digits"], "status": "SUCCESS", "id": "abc"}
    assert parse_filter('tags="run-1"')(fields)
    assert parse_filter('tags="model-digits" AND status="SUCCESS"')(fields)
    assert not parse_filter("tags=run-2")(fields)
    assert parse_filter("")(fields)
    with pytest.raises(ValueError):
        parse_filter("create_time>2020")


def test_requests_the_real_api_refuses_are_refused() -> None:
    build = cloudbuild_v1.Build(
        steps=[cloudbuild_v1.BuildStep(name=DOCKER, args=["build", "."])],
        tags=["run-digits-20260101T0000", "model:digits"],
        substitutions={"_RUN_ID": "r", "run": "r"},
    )
    problems = invalid_build(build)
    assert len(problems) == 2 and "model:digits" in problems[0] and "'run'" in problems[1]
    assert invalid_build(cloudbuild_v1.Build()) == ["build must have at least one step"]


def test_operation_names_round_trip_and_names_qualify() -> None:
    assert build_id_of_operation(operation_name("p", "1234-abcd")) == "1234-abcd"
    assert build_id_of_operation("operations/other") is None
    assert qualified("python:3.11-slim") == "docker.io/library/python:3.11-slim"
    assert qualified("127.0.0.1:5000/cd4ml/digits") == "127.0.0.1:5000/cd4ml/digits:latest"


@dataclass
class LocalBuild:
    """The running stand-ins and clients a test needs."""

    client: cloudbuild_v1.CloudBuildClient
    registry: str
    bucket: Any
    subscription: str
    state_dir: Path
    messages: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)

    def upload(self, files: dict[str, bytes]) -> str:
        """A .tar.gz build context in GCS; returns its object name."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        name = f"contexts/{uuid.uuid4().hex}.tar.gz"
        self.bucket.blob(name).upload_from_string(buffer.getvalue())
        return name

    def build(self, context: str, image: str, tag: str) -> cloudbuild_v1.Build:
        return cloudbuild_v1.Build(
            source=cloudbuild_v1.Source(
                storage_source=cloudbuild_v1.StorageSource(bucket=self.bucket.name, object_=context)
            ),
            steps=[cloudbuild_v1.BuildStep(name=DOCKER, args=["build", "-t", image, "."])],
            images=[image],
            tags=[tag],
        )

    def finished(self, build_id: str, timeout: float = 120.0) -> cloudbuild_v1.Build:
        """GetBuild until the build is terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            build = self.client.get_build(project_id=PROJECT, id=build_id)
            if build.status not in (Status.QUEUED, Status.WORKING):
                return build
            time.sleep(0.1)
        raise TimeoutError(build_id)

    def notifications(self, build_id: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        """The first `count` cloud-builds messages about one build: (status attribute, Build JSON)."""
        from google.cloud.pubsub_v1 import SubscriberClient

        subscriber = SubscriberClient()

        def _enough() -> bool:
            response = subscriber.pull(subscription=self.subscription, max_messages=20, timeout=2)
            for received in response.received_messages:
                attributes = received.message.attributes
                self.messages.setdefault(attributes["buildId"], []).append(
                    (attributes["status"], json.loads(received.message.data))
                )
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=self.subscription, ack_ids=[m.ack_id for m in response.received_messages]
                )
            return len(self.messages.get(build_id, [])) >= count

        processes.wait_until(_enough, what=f"{count} cloud-builds messages for {build_id}", timeout=20)
        return self.messages[build_id]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBuild]:
    """Pub/Sub and GCS emulators, the local registry and the local Cloud Build; all stopped by pid afterwards."""
    tmp = tmp_path_factory.mktemp("cloudbuild")
    pubsub, gcs, registry, cloudbuild = (processes.free_port() for _ in range(4))
    pids: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{pubsub}")
        patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{gcs}")
        env = dict(os.environ)
        try:
            pids.append(
                processes.start(
                    "pubsub", [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={pubsub}"], env=env, log_dir=tmp
                )
            )
            storage_cli = str(Path(sys.executable).parent / "gcp-storage-emulator")
            pids.append(
                processes.start(
                    "gcs",
                    [storage_cli, "start", "--host=127.0.0.1", f"--port={gcs}", "--in-memory"],
                    env=env,
                    log_dir=tmp,
                )
            )
            processes.wait_until(lambda: processes.port_open(pubsub), what="pubsub emulator", timeout=30, pid=pids[0])
            processes.wait_until(lambda: processes.port_open(gcs), what="gcs emulator", timeout=30, pid=pids[1])

            from google.auth.credentials import AnonymousCredentials
            from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient
            from google.cloud.storage import Client as StorageClient

            publisher = PublisherClient()
            for topic in ("gcr", "cloud-builds"):
                publisher.create_topic(name=f"projects/{PROJECT}/topics/{topic}")
            subscription = (
                SubscriberClient()
                .create_subscription(
                    name=f"projects/{PROJECT}/subscriptions/cloud-builds-test",
                    topic=f"projects/{PROJECT}/topics/cloud-builds",
                )
                .name
            )
            bucket = StorageClient(project=PROJECT, credentials=AnonymousCredentials()).create_bucket("build-contexts")  # type: ignore[no-untyped-call]

            common = ["--host", "127.0.0.1", "--project", PROJECT]
            pids.append(
                processes.start(
                    "registry",
                    [
                        sys.executable,
                        "-m",
                        "local_emulator.registry",
                        "--port",
                        str(registry),
                        "--state-dir",
                        str(tmp / "registry"),
                        *common,
                    ],
                    env=env,
                    log_dir=tmp,
                )
            )
            pids.append(
                processes.start(
                    "cloudbuild",
                    [
                        sys.executable,
                        "-m",
                        "local_emulator.cloudbuild",
                        "--port",
                        str(cloudbuild),
                        "--state-dir",
                        str(tmp / "cloudbuild"),
                        *common,
                    ],
                    env=env,
                    log_dir=tmp,
                )
            )
            processes.wait_until(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{registry}/v2/", timeout=1).status == 200,
                what="registry",
                timeout=20,
                pid=pids[2],
                log=tmp / "registry.log",
            )
            log = tmp / "cloudbuild.log"
            processes.wait_until(
                lambda: '"ready"' in log.read_text(), what="local Cloud Build", timeout=240, pid=pids[3], log=log
            )
            client = cloudbuild_v1.CloudBuildClient(
                transport=CloudBuildGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{cloudbuild}"))
            )
            yield LocalBuild(client, f"127.0.0.1:{registry}", bucket, subscription, tmp / "cloudbuild")
        finally:
            for pid in reversed(pids):
                processes.stop(pid)


def _file_in_image(reference: str, path: str, tmp: Path) -> bytes:
    """Copy an image out of the registry into an OCI layout and read one file from its layers."""
    layout = tmp / "pulled"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"oci:{layout}:x"], check=True
    )
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    for layer in reversed(manifest["layers"]):
        with tarfile.open(blobs / layer["digest"].split(":")[1], "r:*") as tar:
            for member in tar.getmembers():
                if member.name.lstrip("./") == path.lstrip("/"):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    return extracted.read()
    raise FileNotFoundError(path)


@pytest.mark.emulator
def test_build_pushes_an_image_holding_the_model(local: LocalBuild, tmp_path: Path) -> None:
    model = os.urandom(200_000)
    context = local.upload(
        {"Dockerfile": b"FROM python:3.11-slim\nCOPY model.joblib /model/model.joblib\n", "model.joblib": model}
    )
    run = uuid.uuid4().hex[:8]
    image = f"{local.registry}/cd4ml/digits:{run}"

    operation = local.client.create_build(project_id=PROJECT, build=local.build(context, image, f"run-{run}"))
    build_id = operation.metadata.build.id
    assert build_id and operation.metadata.build.status == Status.QUEUED

    build = operation.result(timeout=120)  # type: ignore[no-untyped-call]
    assert build.status == Status.SUCCESS and build.id == build_id
    [pushed] = build.results.images
    assert pushed.name == image and pushed.digest.startswith("sha256:")
    inspected = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{local.registry}/cd4ml/digits@{pushed.digest}"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(inspected.stdout)["Digest"] == pushed.digest
    inside = _file_in_image(f"{local.registry}/cd4ml/digits@{pushed.digest}", "/model/model.joblib", tmp_path)
    assert hashlib.sha256(inside).hexdigest() == hashlib.sha256(model).hexdigest()

    messages = local.notifications(build_id, 3)
    assert [status for status, _ in messages] == ["QUEUED", "WORKING", "SUCCESS"]
    final = messages[-1][1]
    assert final["id"] == build_id and final["status"] == "SUCCESS"
    assert final["results"]["images"][0] == {
        "name": image,
        "digest": pushed.digest,
        "pushTiming": final["results"]["images"][0]["pushTiming"],
    }
    assert {"createTime", "startTime", "finishTime", "logUrl"} <= final.keys()

    assert [b.id for b in local.client.list_builds(project_id=PROJECT, filter=f'tags="run-{run}"')] == [build_id]
    assert (
        build.log_url.startswith("file://") and pushed.digest in Path(build.log_url.removeprefix("file://")).read_text()
    )
    assert set(build.timing) == {"FETCHSOURCE", "BUILD", "PUSH"}


@pytest.mark.emulator
def test_run_steps_work_on_the_debian_base(local: LocalBuild) -> None:
    dockerfile = b"FROM python:3.11-slim\nCOPY model.joblib /model/\nRUN python3 -c \"import http.server, hashlib, json; print('stdlib-' + 'ok')\"\n"
    context = local.upload({"Dockerfile": dockerfile, "model.joblib": b"m"})
    operation = local.client.create_build(
        project_id=PROJECT, build=local.build(context, f"{local.registry}/cd4ml/run:1", "run-step")
    )
    build = local.finished(operation.metadata.build.id)
    assert build.status == Status.SUCCESS, build.status_detail
    assert "stdlib-ok" in Path(build.log_url.removeprefix("file://")).read_text()


@pytest.mark.emulator
@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        (b"FROM python:3.11-slim\nCOPY missing.bin /x\n", "missing.bin"),
        (b"FROOM python:3.11-slim\n", "no FROM statement"),
        (b"FROM nowhere/nothing:1\nCOPY model.joblib /x\n", "--base-image"),
    ],
)
def test_broken_dockerfile_fails_with_the_reason(local: LocalBuild, dockerfile: bytes, reason: str) -> None:
    context = local.upload({"Dockerfile": dockerfile, "model.joblib": b"m"})
    operation = local.client.create_build(
        project_id=PROJECT, build=local.build(context, f"{local.registry}/cd4ml/broken:1", "broken")
    )
    with pytest.raises(gexc.GoogleAPICallError):
        operation.result(timeout=120)  # type: ignore[no-untyped-call]
    build = local.finished(operation.metadata.build.id)
    assert build.status == Status.FAILURE
    assert build.failure_info.type_ == FailureType.USER_BUILD_STEP
    assert reason in build.status_detail and build.failure_info.detail == build.status_detail
    assert [status for status, _ in local.notifications(build.id, 3)] == ["QUEUED", "WORKING", "FAILURE"]
    assert not build.results.images


@pytest.mark.emulator
def test_missing_context_object_fails_to_fetch(local: LocalBuild) -> None:
    operation = local.client.create_build(
        project_id=PROJECT, build=local.build("contexts/absent.tar.gz", f"{local.registry}/cd4ml/x:1", "absent")
    )
    build = local.finished(operation.metadata.build.id)
    assert build.status == Status.FAILURE and build.failure_info.type_ == FailureType.FETCH_SOURCE_FAILED
    assert "object not found" in build.status_detail


@pytest.mark.emulator
def test_unsupported_step_and_unbuilt_image_fail_clearly(local: LocalBuild) -> None:
    context = local.upload({"Dockerfile": b"FROM python:3.11-slim\n"})
    unsupported = local.build(context, f"{local.registry}/cd4ml/x:1", "unsupported")
    unsupported.steps[0].name = "gcr.io/cloud-builders/gcloud"
    build = local.finished(local.client.create_build(project_id=PROJECT, build=unsupported).metadata.build.id)
    assert build.status == Status.FAILURE and "not supported" in build.status_detail

    unbuilt = local.build(context, f"{local.registry}/cd4ml/x:1", "unbuilt")
    unbuilt.images[0] = f"{local.registry}/cd4ml/other:1"
    build = local.finished(local.client.create_build(project_id=PROJECT, build=unbuilt).metadata.build.id)
    assert build.status == Status.FAILURE and build.failure_info.type_ == FailureType.PUSH_IMAGE_NOT_FOUND


@pytest.mark.emulator
def test_unknown_builds_and_bad_filters_are_refused(local: LocalBuild) -> None:
    with pytest.raises(gexc.NotFound):
        local.client.get_build(project_id=PROJECT, id="no-such-build")
    with pytest.raises(gexc.InvalidArgument):
        list(local.client.list_builds(project_id=PROJECT, filter="create_time>2020"))
    with pytest.raises(gexc.InvalidArgument):
        local.client.create_build(project_id=PROJECT, build=cloudbuild_v1.Build())


@pytest.mark.emulator
def test_vfs_driver_and_an_oci_layout_base_image(local: LocalBuild, tmp_path: Path) -> None:
    """A second server: vfs storage (for hosts without overlay) and FROM mapped to an OCI layout directory."""
    from local_emulator.baseimage import BaseImageSpec, write_oci_layout

    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("etc/tiny-release")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"tiny\n"))
    write_oci_layout(rootfs, tmp_path / "tiny", BaseImageSpec(packages=("none",)))
    port = processes.free_port()
    argv = [
        sys.executable,
        "-m",
        "local_emulator.cloudbuild",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    argv += ["--project", PROJECT, "--storage-driver", "vfs", "--base-image", f"tiny:1={tmp_path / 'tiny'}"]
    pid = processes.start("vfs", argv, env=os.environ, log_dir=tmp_path)
    try:
        log = tmp_path / "vfs.log"
        processes.wait_until(lambda: '"ready"' in log.read_text(), what="vfs Cloud Build", timeout=60, pid=pid, log=log)
        client = cloudbuild_v1.CloudBuildClient(
            transport=CloudBuildGrpcTransport(channel=grpc.insecure_channel(f"127.0.0.1:{port}"))
        )
        context = local.upload(
            {"Dockerfile": b"FROM tiny:1\nCOPY model.joblib /model.joblib\n", "model.joblib": b"weights"}
        )
        operation = client.create_build(
            project_id=PROJECT, build=local.build(context, f"{local.registry}/cd4ml/tiny:1", "vfs")
        )
        build = operation.result(timeout=60)  # type: ignore[no-untyped-call]
        assert build.status == Status.SUCCESS
        pushed = f"{local.registry}/cd4ml/tiny@{build.results.images[0].digest}"
        assert _file_in_image(pushed, "/model.joblib", tmp_path) == b"weights"
        assert '"driver": "vfs"' in log.read_text()
    finally:
        processes.stop(pid)


@pytest.mark.emulator
def test_cancel_stops_a_running_build(local: LocalBuild) -> None:
    context = local.upload({"Dockerfile": b"FROM python:3.11-slim\nRUN sleep 60\n"})
    build_id = local.client.create_build(
        project_id=PROJECT, build=local.build(context, f"{local.registry}/cd4ml/slow:1", "slow")
    ).metadata.build.id
    processes.wait_until(
        lambda: local.client.get_build(project_id=PROJECT, id=build_id).steps[0].status == Status.WORKING,
        what="step running",
        timeout=30,
    )
    started = time.monotonic()
    cancelled = local.client.cancel_build(project_id=PROJECT, id=build_id)
    assert cancelled.status == Status.CANCELLED and time.monotonic() - started < 5
    assert [status for status, _ in local.notifications(build_id, 3)] == ["QUEUED", "WORKING", "CANCELLED"]
