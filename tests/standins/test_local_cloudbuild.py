"""The local Cloud Build, driven through the unchanged `cloudbuild_v1.CloudBuildClient` over gRPC.

Unmarked tests cover the pure parts (docker arguments, substitutions, ListBuilds filters) and CreateBuild's
validation through an in-process gRPC server (nothing is built). Each validation rule names its source: Google's
own validator, open-sourced as GoogleCloudPlatform/cloud-build-local (`validate/validate.go`), the proto
(google/devtools/cloudbuild/v1/cloudbuild.proto) or the documentation page. Tests marked
`emulator` start the Pub/Sub and GCS emulators, the local registry and the local Cloud Build (which makes
its Debian base image on first use, ~10 s, cached in ~/.cache/cd4ml/baseimage) and really build and push.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from cd4ml_models import folder as models
from google.api_core import exceptions as gexc
from google.cloud.devtools import cloudbuild_v1
from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import CloudBuildGrpcTransport
from local_emulator.cloudbuild.runner import BuildRunner, missing_images
from local_emulator.cloudbuild.service import CloudBuildService, build_id_of_operation, operation_name
from local_emulator.cloudbuild.steps import (
    DockerBuild,
    DockerPush,
    DockerRun,
    DockerTag,
    Mount,
    StepError,
    parse_docker_step,
    parse_filter,
    substitute,
)
from local_emulator.cloudbuild.store import BuildStore
from local_emulator.common import processes
from local_emulator.common.service import ChildGroups
from local_emulator.containers.buildah import ImageStorage, qualified
from local_emulator.iam.access_tokens import Minter, new_key

from cd4ml import smoke
from cd4ml.gcs import GcsPath
from cd4ml.manifest import Smoke
from cd4ml.stages import delivery

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"

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
    assert command == DockerBuild(("r/a:1", "r/a:2"), "ci/Dockerfile", "ctx", ("--build-arg", "X=1"), cache=False)
    assert parse_docker_step(DOCKER, "", ["build", "-t", "r/a:1", "ctx"]).cache  # type: ignore[union-attr]


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


def test_docker_run_subset_and_what_docker_refuses() -> None:
    """`docker run` flags, then IMAGE, then the container's arguments (a flag after IMAGE is the container's).
    What Docker itself refuses is refused in its words; what the local Cloud Build does not model is named."""
    assert parse_docker_step(
        DOCKER,
        "",
        ["run", "--rm", "--network=none", "-v", "/workspace/s:/s:ro", "--entrypoint=python3", "-e", "A=1", "img", "-c"],
    ) == DockerRun("img", ("-c",), "none", "python3", ("A=1",), "", (Mount("/workspace/s", "/s", True),))
    assert parse_docker_step(DOCKER, "", ["run", "--net", "cloudbuild", "-w", "/app", "img"]) == DockerRun(
        "img", (), "cloudbuild", workdir="/app"
    )
    refused = {
        ("run", "--network=none"): 'docker: "docker run" requires at least 1 argument.',
        ("run", "--network=none", "--nope", "img"): "docker: unknown flag: --nope",
        (
            "run",
            "--network=none",
            "-v",
            "/workspace:rel",
            "img",
        ): "invalid mount path: 'rel' mount path must be absolute",
        ("run", "--network=none", "-v", "bad name:/x", "img"): "includes invalid characters for a local volume name",
        ("run", "--network=none", "-w", "rel", "img"): "the working directory 'rel' is invalid",
        ("run", "--network=none", "--network"): "docker: flag needs an argument: --network",
        ("run", "img"): "docker run without --network (the default bridge) is not supported by the local Cloud Build",
        ("run", "--network=host", "img"): "docker run --network=host is not supported by the local Cloud Build",
        ("run", "--network=none", "-d", "img"): "docker run flag -d is not supported by the local Cloud Build",
        ("run", "--network=none", "-v", "vol:/x", "img"): "named volume 'vol' of docker run is not supported",
    }
    for args, message in refused.items():
        with pytest.raises(StepError, match=re.escape(message)):
            parse_docker_step(DOCKER, "", list(args))


def test_substitutions_follow_cloud_build_syntax() -> None:
    """subst.go: `$$` is a literal `$`, keys are upper case, an undefined key becomes ""."""
    values = {"PROJECT_ID": "p", "_RUN": "r1"}
    assert substitute("reg/$PROJECT_ID/m:${_RUN}-$$HOME-$UNKNOWN-$lower", values) == "reg/p/m:r1-$HOME--$lower"


def test_list_filter_subset() -> None:
    fields = {"tags": ["run-1", "model-digits"], "status": "SUCCESS", "id": "abc"}
    assert parse_filter('tags="run-1"')(fields)
    assert parse_filter('tags="model-digits" AND status="SUCCESS"')(fields)
    assert not parse_filter("tags=run-2")(fields)
    assert parse_filter("")(fields)
    with pytest.raises(ValueError):
        parse_filter("create_time>2020")


def test_operation_names_round_trip_and_names_qualify() -> None:
    assert build_id_of_operation(operation_name("p", "1234-abcd")) == "1234-abcd"
    assert build_id_of_operation("operations/other") is None
    assert qualified("python:3.11-slim") == "docker.io/library/python:3.11-slim"
    assert qualified("127.0.0.1:5000/cd4ml/digits") == "127.0.0.1:5000/cd4ml/digits:latest"


# --- CreateBuild validation, through the unchanged client and an in-process server (nothing is built) ----------

IMAGE = "europe-docker.pkg.dev/p/cd4ml/digits:digits-20260101t000000z"
Options = cloudbuild_v1.BuildOptions


class _Queue(futures.ThreadPoolExecutor):
    """Records the builds CreateBuild accepts instead of running them."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.accepted: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        self.accepted.append(str(args[0]))
        done: futures.Future[Any] = futures.Future()
        done.set_result(None)
        return done


@dataclass
class Validating:
    client: cloudbuild_v1.CloudBuildClient
    queue: _Queue

    def refusal(self, build: cloudbuild_v1.Build) -> str:
        """The INVALID_ARGUMENT message CreateBuild answers; fails if the build was accepted."""
        before = len(self.queue.accepted)
        with pytest.raises(gexc.InvalidArgument) as refused:
            self.client.create_build(project_id=PROJECT, build=build)
        assert len(self.queue.accepted) == before, "a refused build must not be queued"
        return str(refused.value.message)

    def accepted(self, build: cloudbuild_v1.Build) -> cloudbuild_v1.Build:
        """The build as stored by an accepted CreateBuild (read back with GetBuild)."""
        operation = self.client.create_build(project_id=PROJECT, build=build)
        assert operation.metadata.build.id == self.queue.accepted[-1]
        return self.client.get_build(project_id=PROJECT, id=operation.metadata.build.id)


@pytest.fixture(scope="module")
def validating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Validating]:
    tmp = tmp_path_factory.mktemp("validation")
    store = BuildStore(tmp / "builds")
    runner = BuildRunner(tmp, store, ImageStorage.under(tmp), ChildGroups(), notify=lambda _build: None)
    queue = _Queue()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(CloudBuildService(store, runner, queue, lambda _build: None).handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Validating(cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=channel)), queue)
    finally:
        channel.close()
        server.stop(None)
        queue.shutdown()


def _valid(**fields: Any) -> cloudbuild_v1.Build:
    """A build Cloud Build accepts: one docker build step, its image pushed; fields override."""
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(storage_source=cloudbuild_v1.StorageSource(bucket="b", object_="c.tar.gz")),
        steps=[cloudbuild_v1.BuildStep(name=DOCKER, args=["build", "-t", IMAGE, "."])],
        images=[IMAGE],
    )
    for name, value in fields.items():
        setattr(build, name, value)
    return build


def test_cd4ml_request_with_unused_substitutions_is_refused(validating: Validating) -> None:
    """Exactly what build_image sent before the fix: `_RUN_ID` and `_MODEL_SHA256`, which no field uses.

    Default MUST_MATCH (cloudbuild.proto BuildOptions.SubstitutionOption: "Fails the build if error in
    substitutions checks, like missing a substitution in the template or in the map"); the message is
    validate.go CheckSubstitutionTemplate's, as the service answers it (issue 7).
    """
    run_id, sha256 = "digits-20260101t000000z", "ab" * 32
    image = f"127.0.0.1:5000/digits:{run_id}"
    args = ["build", "-t", image, "-f", "Dockerfile", "--build-arg", "BASE_IMAGE=python:3.11-slim"]
    args += ["--label", f"cd4ml.run_id={run_id}", "--label", f"cd4ml.model_sha256={sha256}", "."]
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            storage_source=cloudbuild_v1.StorageSource(bucket="artifacts", object_=f"builds/{run_id}/context.tar.gz")
        ),
        steps=[cloudbuild_v1.BuildStep(name=delivery.DOCKER_BUILDER, args=args)],
        images=[image],
        tags=[f"{delivery.RUN_TAG}{run_id}", "cd4ml-model-digits"],
        substitutions={"_RUN_ID": run_id, "_MODEL_SHA256": sha256},
    )
    assert validating.refusal(build) == (
        'key "_MODEL_SHA256" in the substitution data is not matched in the template;'
        'key "_RUN_ID" in the substitution data is not matched in the template'
    )


@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("account", ["", "builder@p.iam.gserviceaccount.com"])
def test_cd4ml_build_request_is_accepted(validating: Validating, account: str, smoke: bool) -> None:
    """What build_image sends passes every rule here, with and without a build service account and a smoke test.

    With the digits example's smoke test: docker build, then the two smoke steps in the image just built
    (BuildStep.name, cloudbuild.proto), then the push of `images` (Artifacts.images: only after every step
    succeeded). Every value is literal, so MUST_MATCH has nothing to refuse.
    """
    settings = SimpleNamespace(registry="europe-docker.pkg.dev/p/cd4ml", project="p", build_service_account=account)
    manifest = (
        models.read(EXAMPLE)
        if smoke
        else SimpleNamespace(name="digits", dockerfile="serving/Dockerfile", base_image="python:3.11-slim", smoke=None)
    )
    build = delivery.build_request(
        cast(Any, SimpleNamespace(settings=settings)),
        cast(Any, manifest),
        "digits-20260101t000000z",
        GcsPath("artifacts", "builds/digits-20260101t000000z/context.tar.gz"),
        "ab" * 32,
    )
    stored = validating.accepted(build)
    assert stored.status == Status.QUEUED and list(stored.tags) == list(build.tags)
    image = "europe-docker.pkg.dev/p/cd4ml/digits:digits-20260101t000000z"
    assert list(stored.images) == [image]
    if not smoke:
        assert [step.name for step in stored.steps] == [DOCKER]
        return
    assert [(step.name, step.id, step.entrypoint) for step in stored.steps] == [
        (DOCKER, "", ""),
        (DOCKER, delivery.RUN_STEP, ""),
        (delivery.CHECKER_IMAGE, delivery.SMOKE_STEP, "python3"),
        (delivery.CHECKER_IMAGE, delivery.VERDICT_STEP, "python3"),
    ]
    command = parse_docker_step(DOCKER, "", list(stored.steps[1].args))  # the docker run the stand-in runs
    assert isinstance(command, DockerRun) and command.image == image and command.network == "none"
    check = list(command.args)
    assert check[:2] == [f"{delivery.SMOKE_MOUNT}/{delivery.SMOKE_SCRIPT}", "check"]
    assert check[check.index("--model-sha256") + 1] == "ab" * 32
    assert check[check.index("--") + 1 :] == ["python3", "/opt/serve.py"]
    assert list(stored.steps[3].args) == [delivery.SMOKE_SCRIPT, "verdict", delivery.SMOKE_RESULT]


def test_a_dollar_in_a_smoke_command_is_escaped_not_substituted(validating: Validating) -> None:
    """`$HOME` in a command would be a substitution key (refused, not a built-in); `$$` is a literal `$`
    (substitute-variable-values: "use $$ to escape")."""
    settings = SimpleNamespace(registry="r.example/p/cd4ml", project="p", build_service_account="")
    base = models.read(EXAMPLE)
    manifest = replace(base, smoke=replace(cast(Any, base.smoke), command=("sh", "-c", "exec $HOME/serve")))
    build = delivery.build_request(
        cast(Any, SimpleNamespace(settings=settings)), manifest, "digits-20260101t000000z", GcsPath("b", "c"), "ab" * 32
    )
    stored = validating.accepted(build)
    assert stored.steps[1].args[-1] == "exec $$HOME/serve"
    assert substitute(stored.steps[1].args[-1], {}) == "exec $HOME/serve"


def test_must_match_refuses_both_directions_and_allow_loose_allows_them(validating: Validating) -> None:
    """cloudbuild.proto BuildOptions.SubstitutionOption (MUST_MATCH default, ALLOW_LOOSE); messages: validate.go."""
    undefined = _valid(tags=["run-${_RUN}"], substitutions={"_OTHER": "x"}, images=[IMAGE + "$_OTHER"])
    assert validating.refusal(undefined) == (
        'key in the template "_RUN" is not matched in the substitution data; substitutions = map[_OTHER:x]'
    )
    unused = _valid(substitutions={"_UNUSED": "x"})
    assert validating.refusal(unused) == 'key "_UNUSED" in the substitution data is not matched in the template'
    loose = Options(substitution_option=Options.SubstitutionOption.ALLOW_LOOSE)
    stored = validating.accepted(_valid(tags=["run-${_RUN}"], substitutions={"_UNUSED": "x"}, options=loose))
    assert list(stored.tags) == ["run-"]  # an undefined key becomes "" (substitute-variable-values)


def test_builtins_escapes_and_unknown_keys(validating: Validating) -> None:
    """Built-ins of every build and of triggers (substitute-variable-values, "Using default substitutions");
    `$$` escapes; a `$KEY` that is neither `_USER` nor built-in is refused even with ALLOW_LOOSE (validate.go)."""
    stored = validating.accepted(
        _valid(
            tags=["b-$BUILD_ID", "p-${PROJECT_ID}", "l-$LOCATION", "c$COMMIT_SHA", "n$PROJECT_NUMBER"],
            steps=[cloudbuild_v1.BuildStep(name=DOCKER, args=["build", "--label", "x=$$HOME$lower", "-t", IMAGE, "."])],
        )
    )
    assert list(stored.tags) == [f"b-{stored.id}", f"p-{PROJECT}", "l-global", "c", "n"]
    for options in (Options(), Options(substitution_option=Options.SubstitutionOption.ALLOW_LOOSE)):
        assert validating.refusal(_valid(tags=["$FOO"], options=options)) == (
            "invalid value for 'build.substitutions': key in the template \"FOO\" is not a valid built-in substitution"
        )
    # Only pull-request triggers define $_HEAD_BRANCH: in a build created directly it is an undefined user key.
    assert validating.refusal(_valid(tags=["$_HEAD_BRANCH"])).startswith('key in the template "_HEAD_BRANCH" is not')


def test_user_substitution_keys(validating: Validating) -> None:
    """User keys match `_[A-Z0-9_]+`; only the triggers' built-ins may be overridden (validate.go
    CheckSubstitutionsLoose; the docs' list for `gcloud builds submit --substitutions`)."""
    for key in ("run", "_lower", "PROJECT_ID", "BUILD_ID"):
        assert validating.refusal(_valid(substitutions={key: "x"})) == (
            f'invalid .substitutions field: substitution key "{key}" does not respect format "^_[A-Z0-9_]+$" '
            "and is not an overridable built-in substitutions"
        )
    stored = validating.accepted(_valid(substitutions={"COMMIT_SHA": "abc1234"}, tags=["c-$COMMIT_SHA"]))
    assert list(stored.tags) == ["c-abc1234"]


def test_a_service_account_needs_logs_outside_the_default_bucket(validating: Validating) -> None:
    """configure-user-specified-service-accounts ("you must store your build logs either in Cloud Logging or in a
    user-created Cloud Storage bucket"); the message is the service's (googleapis/sdk-platform-java#3342)."""
    account = "projects/p/serviceAccounts/builder@p.iam.gserviceaccount.com"
    needs_logs = (
        "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', "
        "(b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, "
        "or (c) use either CLOUD_LOGGING_ONLY / NONE logging options"
    )
    mode = Options.LoggingMode
    for refused in (Options(), Options(logging=mode.LEGACY), Options(logging=mode.GCS_ONLY)):
        assert validating.refusal(_valid(service_account=account, options=refused)) == needs_logs
    for options in (Options(logging=mode.CLOUD_LOGGING_ONLY), Options(logging=mode.NONE)):
        validating.accepted(_valid(service_account=account, options=options))
    validating.accepted(_valid(service_account=account, logs_bucket="gs://my-logs"))
    regional = Options(default_logs_bucket_behavior=Options.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET)
    validating.accepted(_valid(service_account=account, options=regional))
    # cloudbuild.proto Build.service_account: "Must be of the format projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}".
    bare = _valid(service_account="builder@p.iam.gserviceaccount.com", options=Options(logging=mode.NONE))
    assert "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}" in validating.refusal(bare)


def test_build_tags_must_match_the_tag_format(validating: Validating) -> None:
    """validate.go sanitizeBuildTags; the message as the service answers it (kubernetes/cloud-provider-gcp#810)."""
    for tag in ("model:digits", "ccm/v32.2.0", "x" * 129, "é", "-lead"):
        assert validating.refusal(_valid(tags=[tag])) == (
            f'invalid build: invalid build tag "{tag}": must match format "^[\\\\w][\\\\w.-]{{0,127}}$"'
        )
    assert list(validating.accepted(_valid(tags=["a", "", "a", "x" * 128])).tags) == ["a", "x" * 128]


def test_step_ids_are_unique_and_wait_for_names_earlier_steps(validating: Validating) -> None:
    """cloudbuild.proto BuildStep.id / wait_for; validate.go CheckBuildSteps (messages)."""

    def step(step_id: str, *wait_for: str) -> cloudbuild_v1.BuildStep:
        return cloudbuild_v1.BuildStep(name=DOCKER, args=["build", "-t", IMAGE, "."], id=step_id, wait_for=wait_for)

    assert validating.refusal(_valid(steps=[step("a"), step("a")])) == (
        'invalid .steps field: build step #1 - "a": the ID is not unique'
    )
    assert validating.refusal(_valid(steps=[step("a", "b"), step("b")])) == (
        'invalid .steps field: build step #0 - "a" depends on "b", which has not been defined'
    )
    assert validating.refusal(_valid(steps=[step("", "nowhere")])) == (
        'invalid .steps field: build step #0 depends on "nowhere", which has not been defined'
    )
    validating.accepted(_valid(steps=[step("a", "-"), step("b", "a"), step("", "-", "b")]))


def test_steps_images_and_timeouts(validating: Validating) -> None:
    """validate.go CheckBuildSteps, checkBuildStepNames, checkImageNames and CheckBuild's timeout limit."""
    assert validating.refusal(_valid(steps=[])) == "invalid .steps field: no build steps are specified"
    assert validating.refusal(_valid(steps=[cloudbuild_v1.BuildStep(args=["build", "."])])) == (
        "invalid .steps field: build step 0 must specify name"
    )
    upper = "europe-docker.pkg.dev/p/cd4ml/Digits:1"
    assert validating.refusal(_valid(images=[upper])) == (
        f'invalid build: invalid image name "{upper}" contains uppercase letters'
    )
    assert validating.refusal(_valid(images=["bad image"])) == 'invalid build: invalid image name "bad image"'
    assert validating.refusal(_valid(steps=[cloudbuild_v1.BuildStep(name="Not/An Image")])) == (
        'invalid build: invalid build step name "Not/An Image"'
    )
    bad_env = cloudbuild_v1.BuildStep(name=DOCKER, args=["build", "-t", IMAGE, "."], env=["NOVALUE"])
    assert validating.refusal(_valid(steps=[bad_env])) == (
        'invalid .steps field: build step #0 - "": the Env entry "NOVALUE" must be of the form "KEY=VALUE"'
    )
    assert validating.refusal(_valid(timeout=timedelta(hours=25))) == "timeout exceeds the timeout limit of 24h0m0s"
    stored = validating.accepted(_valid())
    assert stored.timeout == timedelta(minutes=60)  # cloudbuild.proto Build.timeout: "Default time is 60 minutes."


def test_images_no_step_produced_are_named_in_cloud_builds_words() -> None:
    """A listed image no step built ends the build in FAILURE (PUSH_IMAGE_NOT_FOUND), not INVALID_ARGUMENT;
    the wording is the service's (kubeflow/pipelines#1839)."""
    assert missing_images(["r/a:1", "r/b:2"]) == (
        'failed to find one or more images after execution of build steps: ["r/a:1" "r/b:2"]'
    )


@dataclass
class LocalBuild:
    """The running stand-ins and clients a test needs."""

    client: cloudbuild_v1.CloudBuildClient
    registry: str
    bucket: Any
    subscription: str
    state_dir: Path
    messages: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    token_key: Path | None = None  # the stack's access-token key: a build's account gets tokens signed with it

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
                        "--token-key",
                        str(new_key(tmp / "token.key")),
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
            yield LocalBuild(
                client, f"127.0.0.1:{registry}", bucket, subscription, tmp / "cloudbuild", token_key=tmp / "token.key"
            )
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
def test_an_unchanged_instruction_reuses_its_layer_in_the_next_build_unless_no_cache(local: LocalBuild) -> None:
    """The stand-in keeps each repository's last layers (Cloud Build would rebuild them on a fresh worker: the image is
    the same, the local build faster); a changed input rebuilds from there on, and `--no-cache` rebuilds everything."""
    dockerfile = (
        b"FROM python:3.11-slim\nCOPY deps.txt /deps.txt\nRUN cat /deps.txt > /installed\nCOPY model.joblib /model/\n"
    )

    def build(model: bytes, *flags: str) -> str:
        context = local.upload({"Dockerfile": dockerfile, "deps.txt": b"numpy\n", "model.joblib": model})
        image = f"{local.registry}/cd4ml/layers:{uuid.uuid4().hex[:8]}"
        request = local.build(context, image, "layers")
        request.steps[0].args[1:1] = list(flags)
        done = local.finished(local.client.create_build(project_id=PROJECT, build=request).metadata.build.id)
        assert done.status == Status.SUCCESS, done.status_detail
        log = Path(done.log_url.removeprefix("file://")).read_text()
        return log[log.index("RUN cat") :]

    build(b"first")
    assert "Using cache" in build(b"second").split("COPY model.joblib")[0]  # the RUN layer: reused
    assert "Using cache" not in build(b"third", "--no-cache")


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
    assert build.status_detail == missing_images([unbuilt.images[0]])


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
    from local_emulator.containers.baseimage import BaseImageSpec, write_oci_layout

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


_SERVER = b"""import http.server, json, os
class H(http.server.BaseHTTPRequestHandler):
    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply({"model_sha256": open("/opt/sha").read().strip()})
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.reply({"predictions": [sum(row) % 10 for row in body["instances"]]})
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def _smoke_build(local: LocalBuild, expected: int, tag: str) -> tuple[cloudbuild_v1.Build, str]:
    """Build an image serving `sum % 10`, then smoke-test it as build_image does: golden expects `expected` for 3."""
    sha = "ab" * 32
    golden = json.dumps({"request": {"instances": [[1, 2]]}, "expected": {"predictions": [expected]}}).encode()
    context = local.upload(
        {
            "Dockerfile": b"FROM python:3.11-slim\nCOPY serve.py /opt/serve.py\nCOPY sha /opt/sha\n",
            "serve.py": _SERVER,
            "sha": sha.encode(),
            "smoke.jsonl": golden + b"\n",
            delivery.SMOKE_SCRIPT: Path(smoke.SCRIPT).read_bytes(),
            # What build_context adds: the folder the server's container sees.
            f"{delivery.SMOKE_DIR}/{delivery.SMOKE_GOLDEN}": golden + b"\n",
            f"{delivery.SMOKE_DIR}/{delivery.SMOKE_SCRIPT}": Path(smoke.SCRIPT).read_bytes(),
        }
    )
    image = f"{local.registry}/cd4ml/smoked:{tag}"
    manifest = SimpleNamespace(
        dockerfile="Dockerfile",
        smoke=Smoke("smoke.jsonl", ("python3", "/opt/serve.py"), 1.0, 5000.0, port=processes.free_port()),
    )
    build = local.build(context, image, tag)
    build.steps.extend(delivery.smoke_steps(cast(Any, manifest), image, sha))
    return local.finished(local.client.create_build(project_id=PROJECT, build=build).metadata.build.id), image


@pytest.mark.emulator
def test_steps_run_in_the_image_built_earlier_and_return_builder_output(local: LocalBuild) -> None:
    """BuildStep.name may name an image a previous step built; what a step writes to $BUILDER_OUTPUT/output comes
    back in results.buildStepOutputs[i], one entry per step (cloudbuild.proto Results.build_step_outputs), and
    base64 in the cloud-builds message's JSON. Images are pushed only when every step succeeded."""
    build, image = _smoke_build(local, expected=3, tag="smoke-pass")
    assert build.status == Status.SUCCESS, build.status_detail
    outputs = list(build.results.build_step_outputs)
    assert len(outputs) == 4 and outputs[0] == outputs[1] == outputs[3] == b""
    result = json.loads(outputs[2])
    assert result["passed"] is True and result["health_sha256"] == "ab" * 32 and result["agreed"] == 1
    [message] = [b for status, b in local.notifications(build.id, 3) if status == "SUCCESS"]
    assert json.loads(base64.b64decode(message["results"]["buildStepOutputs"][2])) == result
    assert delivery.smoke_result(message) == result
    assert [i.name for i in build.results.images] == [image]

    failed, _ = _smoke_build(local, expected=4, tag="smoke-fail")
    assert failed.status == Status.FAILURE and failed.failure_info.type_ == FailureType.USER_BUILD_STEP
    assert failed.status_detail.startswith(f'Build step failure: build step 3 "{failed.steps[3].name}" failed: ')
    assert [s.status for s in failed.steps] == [Status.SUCCESS] * 3 + [Status.FAILURE]
    assert json.loads(failed.results.build_step_outputs[2])["failed"] == ["agreement"]
    assert not failed.results.images
    log = Path(failed.log_url.removeprefix("file://")).read_text()
    assert "smoke test failed: agreement: 0.00 < min_agreement 1.0 (0/1 golden requests agreed)" in log


@pytest.mark.emulator
def test_a_step_in_a_base_image_runs_and_an_unknown_image_fails_clearly(local: LocalBuild) -> None:
    context = local.upload({"Dockerfile": b"FROM python:3.11-slim\n"})
    build = local.build(context, f"{local.registry}/cd4ml/base:1", "base-step")
    build.images.clear()
    build.steps[0] = cloudbuild_v1.BuildStep(
        name="python:3.11-slim",
        entrypoint="python3",
        args=["-c", "import os; open(os.environ['BUILDER_OUTPUT'] + '/output', 'w').write(os.getcwd())"],
        dir="sub",
    )
    build.steps.insert(0, cloudbuild_v1.BuildStep(name="python:3.11-slim", args=["mkdir", "-p", "sub"]))
    with socket.socket() as taken:  # a port in use on the host is free in a step: its localhost is its own
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"import socket; socket.socket().bind(('127.0.0.1', {taken.getsockname()[1]}))"
        build.steps.append(cloudbuild_v1.BuildStep(name="python:3.11-slim", entrypoint="python3", args=["-c", bind]))
        done = local.finished(local.client.create_build(project_id=PROJECT, build=build).metadata.build.id)
    assert done.status == Status.SUCCESS, done.status_detail
    assert list(done.results.build_step_outputs) == [b"", b"/workspace/sub", b""]

    build.steps[1].name = "europe-docker.pkg.dev/p/never/pulled:1"
    done = local.finished(local.client.create_build(project_id=PROJECT, build=build).metadata.build.id)
    assert done.status == Status.FAILURE and "never pulls" in done.status_detail
    assert "europe-docker.pkg.dev/p/never/pulled:1" in done.status_detail


_PROBE = b"""import json, sys, urllib.request
def token(host):
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token", headers={"Metadata-Flavor": "Google"}
    )
    try:
        return json.loads(urllib.request.urlopen(request, timeout=3).read())["access_token"]
    except Exception as error:
        return "unreachable: " + type(error).__name__
found = {host: token(host) for host in ("169.254.169.254", "metadata.google.internal")}
open(sys.argv[1], "w").write(json.dumps(found))
"""


@pytest.mark.emulator
def test_steps_get_the_build_accounts_token_and_a_docker_run_on_no_network_gets_nothing(local: LocalBuild) -> None:
    """On Cloud Build each step is on the `cloudbuild` network, where the metadata server hands out the build
    account's token (build-config-file-schema#network); a container a docker step starts gets the network its
    flags name: `--network=cloudbuild` the same, `--network=none` a loopback interface alone (Docker's none driver):
    no metadata server, no token. The probe asks 169.254.169.254 and metadata.google.internal for a token."""
    assert local.token_key is not None
    context = local.upload({"probe.py": _PROBE})
    account = f"cd4ml-build-smoked@{PROJECT}.iam.gserviceaccount.com"
    run = [DOCKER, "run", "--rm", "--entrypoint=python3", "-v", "/workspace:/w"]
    collect = "import json, os; open(os.environ['BUILDER_OUTPUT'] + '/output', 'w').write(json.dumps({n: json.load(open(n)) for n in ('step.json', 'cloudbuild.json', 'none.json')}))"
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            storage_source=cloudbuild_v1.StorageSource(bucket=local.bucket.name, object_=context)
        ),
        steps=[
            cloudbuild_v1.BuildStep(name="python:3.11-slim", entrypoint="python3", args=["probe.py", "step.json"]),
            cloudbuild_v1.BuildStep(
                name=run[0],
                args=[*run[1:], "--network=cloudbuild", "python:3.11-slim", "/w/probe.py", "/w/cloudbuild.json"],
            ),
            cloudbuild_v1.BuildStep(
                name=run[0], args=[*run[1:], "--network=none", "python:3.11-slim", "/w/probe.py", "/w/none.json"]
            ),
            cloudbuild_v1.BuildStep(name="python:3.11-slim", entrypoint="python3", args=["-c", collect]),
        ],
        tags=["networks"],
        service_account=f"projects/{PROJECT}/serviceAccounts/{account}",
        options=cloudbuild_v1.BuildOptions(logging=cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY),
    )
    done = local.finished(local.client.create_build(project_id=PROJECT, build=build).metadata.build.id)
    assert done.status == Status.SUCCESS, done.status_detail
    found = json.loads(done.results.build_step_outputs[3])
    minter = Minter.from_file(local.token_key)
    for on_cloudbuild in ("step.json", "cloudbuild.json"):
        assert {minter.identity(token) for token in found[on_cloudbuild].values()} == {"build:cd4ml-build-smoked"}
    assert found["none.json"] == {
        "169.254.169.254": "unreachable: URLError",
        "metadata.google.internal": "unreachable: URLError",
    }
