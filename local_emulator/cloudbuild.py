"""Local Cloud Build: a gRPC stand-in for `google.devtools.cloudbuild.v1.CloudBuild` that really builds images.

It answers CreateBuild, GetBuild, ListBuilds (filter `tags="X"`, `status=...`, `id=...`), CancelBuild and
longrunning GetOperation for the unchanged client::

    cloudbuild_v1.CloudBuildClient(transport=CloudBuildGrpcTransport(channel=grpc.insecure_channel(HOST)))

A build fetches its `storage_source` (.tar.gz or .zip) from the GCS emulator (STORAGE_EMULATOR_HOST), runs
the docker builder's `build`/`tag`/`push` steps with buildah (`--isolation chroot`, overlay or vfs storage,
never pulling: FROM resolves to base images mapped with --base-image), pushes `images` with skopeo, and
publishes Cloud Build's own QUEUED, WORKING and terminal messages to the `cloud-builds` topic on the
Pub/Sub emulator (PUBSUB_EMULATOR_HOST): data = the Build as JSON, attributes buildId and status.

    python -m local_emulator.cloudbuild --host 127.0.0.1 --port P --state-dir DIR --project PROJECT \\
        [--topic cloud-builds] [--base-image python:3.11-slim=debian ...] [--base-cache-dir DIR]
        [--base-package python3 ...] [--workers 2] [--storage-driver auto|overlay|vfs]

It listens only once its base images are in its storage (first start ~10 s to make the Debian base, then
~2 s), so an open port means ready. Needs PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import argparse
import base64
import logging
import re
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import grpc
from google.cloud.devtools.cloudbuild_v1.types import cloudbuild
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2

from local_emulator import baseimage
from local_emulator._build_buildah import ImageStorage, qualified
from local_emulator._build_steps import (
    DockerBuild,
    DockerPush,
    DockerTag,
    StepError,
    parse_docker_step,
    parse_filter,
    substitute,
)
from local_emulator._service import (
    ChildGroups,
    CommandResult,
    OrderedPublisher,
    TopicPublisher,
    atomic_write,
    configure_logging,
    require_env,
    stop_event_on_signals,
)

Status = cloudbuild.Build.Status
FailureType = cloudbuild.Build.FailureInfo.FailureType
# The members as typed values: mypy sees proto-plus enum members as plain ints.
QUEUED = Status(Status.QUEUED)
WORKING = Status(Status.WORKING)
SUCCESS = Status(Status.SUCCESS)
FAILURE = Status(Status.FAILURE)
INTERNAL_ERROR = Status(Status.INTERNAL_ERROR)
TIMEOUT = Status(Status.TIMEOUT)
CANCELLED = Status(Status.CANCELLED)
EXPIRED = Status(Status.EXPIRED)
USER_BUILD_STEP = FailureType(FailureType.USER_BUILD_STEP)
PUSH_FAILED = FailureType(FailureType.PUSH_FAILED)
PUSH_IMAGE_NOT_FOUND = FailureType(FailureType.PUSH_IMAGE_NOT_FOUND)
FETCH_SOURCE_FAILED = FailureType(FailureType.FETCH_SOURCE_FAILED)

#: Statuses after which a build never changes again.
TERMINAL = frozenset({SUCCESS, FAILURE, INTERNAL_ERROR, TIMEOUT, CANCELLED, EXPIRED})
SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"
OPERATIONS_SERVICE = "google.longrunning.Operations"
DEFAULT_BASE_IMAGES: tuple[tuple[str, str], ...] = (("python:3.11-slim", "debian"),)
_DEFAULT_TIMEOUT = timedelta(minutes=10)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_USER_SUBSTITUTION = re.compile(r"^_[A-Z0-9_]+$")

_log = logging.getLogger("cloudbuild")


@dataclass(frozen=True)
class Settings:
    """Everything the server is started with (from its CLI)."""

    host: str
    port: int
    state_dir: Path
    project: str
    topic: str = "cloud-builds"
    base_images: tuple[tuple[str, str], ...] = DEFAULT_BASE_IMAGES
    base_cache_dir: Path = field(default_factory=baseimage.default_cache_dir)
    base_packages: tuple[str, ...] = baseimage.BaseImageSpec.packages
    workers: int = 2
    storage_driver: str = "auto"


@dataclass(frozen=True)
class _Outcome:
    """How a build ended, before it is written onto the Build."""

    status: Status
    detail: str = ""
    failure_type: FailureType | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _span(start: datetime) -> cloudbuild.TimeSpan:
    return cloudbuild.TimeSpan(start_time=start, end_time=_now())


def _copy(build: cloudbuild.Build) -> cloudbuild.Build:
    copied: cloudbuild.Build = cloudbuild.Build.deserialize(cloudbuild.Build.serialize(build))
    return copied


def build_json(build: cloudbuild.Build) -> str:
    """The Build as the real API renders it in JSON (camelCase), e.g. in `cloud-builds` messages."""
    return str(json_format.MessageToJson(cloudbuild.Build.pb(build), indent=None))


def operation_name(project: str, build_id: str) -> str:
    encoded = base64.urlsafe_b64encode(build_id.encode()).decode().rstrip("=")
    return f"operations/build/{project}/{encoded}"


def build_id_of_operation(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) != 4 or parts[:2] != ["operations", "build"]:
        return None
    encoded = parts[3] + "=" * (-len(parts[3]) % 4)
    try:
        return base64.urlsafe_b64decode(encoded).decode()
    except ValueError:
        return None


def _project_and_location(parent: str, project_id: str) -> tuple[str, str]:
    """`projects/P/locations/L` or a bare project id → (P, L)."""
    parts = parent.split("/")
    if len(parts) >= 2 and parts[0] == "projects":
        location = parts[3] if len(parts) >= 4 and parts[2] == "locations" else "global"
        return parts[1], location
    return project_id, "global"


def _id_from_name(name: str, build_id: str) -> str:
    """`projects/P/locations/L/builds/ID` or the id field."""
    if build_id:
        return build_id
    parts = name.split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] == "builds" else ""


class BuildStore:
    """Every build by id, kept as serialized snapshots (thread-safe) and as JSON under state_dir/builds."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._builds: dict[str, bytes] = {}

    def load(self) -> list[cloudbuild.Build]:
        """Read builds saved by an earlier run; return the ones it left unfinished."""
        unfinished = []
        for path in sorted(self._dir.glob("*.json")):
            build = cloudbuild.Build.wrap(json_format.Parse(path.read_text(encoding="utf-8"), cloudbuild.Build.pb()()))
            self._builds[build.id] = cloudbuild.Build.serialize(build)
            if build.status not in TERMINAL:
                unfinished.append(build)
        return unfinished

    def put(self, build: cloudbuild.Build) -> None:
        data = cloudbuild.Build.serialize(build)
        with self._lock:
            self._builds[build.id] = data
            with atomic_write(self._dir / f"{build.id}.json") as handle:
                handle.write(build_json(build))

    def get(self, build_id: str) -> cloudbuild.Build | None:
        with self._lock:
            data = self._builds.get(build_id)
        return None if data is None else cloudbuild.Build.deserialize(data)

    def all(self) -> list[cloudbuild.Build]:
        with self._lock:
            snapshots = list(self._builds.values())
        return [cloudbuild.Build.deserialize(data) for data in snapshots]


class _Cancelled(Exception):
    """The build was cancelled, or the server is stopping."""


class _TimedOut(Exception):
    """The build ran past its timeout."""


class BuildRunner:
    """Runs builds: fetch the source, run the docker steps with buildah, push with skopeo, report."""

    def __init__(
        self,
        settings: Settings,
        store: BuildStore,
        storage: ImageStorage,
        children: ChildGroups,
        notify: Callable[[cloudbuild.Build], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._storage = storage
        self._children = children
        self._notify = notify
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self.stopping = False
        self._logs = settings.state_dir / "logs"
        self._work = settings.state_dir / "workspaces"
        self._logs.mkdir(parents=True, exist_ok=True)
        self._work.mkdir(parents=True, exist_ok=True)

    def log_path(self, build_id: str) -> Path:
        return self._logs / f"{build_id}.log"

    def cancel(self, build_id: str) -> cloudbuild.Build | None:
        """Cancel a queued or running build; return it as it now stands."""
        with self._lock:
            build = self._store.get(build_id)
            if build is None or build.status in TERMINAL:
                return build
            self._cancelled.add(build_id)
            if build.status == QUEUED:
                self._finish(build, _Outcome(CANCELLED, "Build was cancelled"))
                return build
        self._children.cancel(build_id)
        deadline = time.monotonic() + 5.0  # the runner notices within a moment; answer with the final status
        while (current := self._store.get(build_id)) is not None and current.status not in TERMINAL:
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return current

    def _check(self, build_id: str, deadline: float) -> None:
        if self.stopping or build_id in self._cancelled:
            raise _Cancelled
        if time.monotonic() > deadline:
            raise _TimedOut

    def _finish(self, build: cloudbuild.Build, outcome: _Outcome) -> None:
        build.status = outcome.status
        build.status_detail = outcome.detail
        if outcome.failure_type is not None:
            build.failure_info = cloudbuild.Build.FailureInfo(type_=outcome.failure_type, detail=outcome.detail)
        build.finish_time = _now()
        interrupted = outcome.status if outcome.status in (TIMEOUT, CANCELLED) else CANCELLED
        for step in build.steps:
            if step.status == WORKING:
                step.status = interrupted
        self._store.put(build)
        self._notify(build)
        _log.info(
            "build finished",
            extra={
                "build_id": build.id,
                "status": outcome.status.name,
                "detail": outcome.detail,
                "tags": list(build.tags),
            },
        )

    def run(self, build_id: str) -> None:
        """Execute one queued build to its terminal status (called on a worker thread)."""
        with self._lock:
            build = self._store.get(build_id)
            if build is None or build.status != QUEUED or build_id in self._cancelled:
                return
            build.status = WORKING
            build.start_time = _now()
            self._store.put(build)
        self._notify(build)
        _log.info("build started", extra={"build_id": build_id, "tags": list(build.tags)})
        timeout = build.timeout if build.timeout.total_seconds() > 0 else _DEFAULT_TIMEOUT
        deadline = time.monotonic() + timeout.total_seconds()
        workspace = self._work / build_id
        internal: list[str] = []
        try:
            with self.log_path(build_id).open("a", encoding="utf-8") as log_file:
                outcome = self._execute(build, workspace, log_file, deadline, internal)
                log_file.write(f"FINISHED {outcome.status.name} {outcome.detail}\n")
        except _Cancelled:
            outcome = (
                _Outcome(INTERNAL_ERROR, "local Cloud Build stopped while the build ran")
                if self.stopping
                else _Outcome(CANCELLED, "Build was cancelled")
            )
        except _TimedOut:
            outcome = _Outcome(TIMEOUT, f"Build timed out after {int(timeout.total_seconds())}s")
        except Exception as error:  # a bug here must still end the build (INTERNAL_ERROR), not hang it
            _log.exception("build crashed", extra={"build_id": build_id})
            outcome = _Outcome(INTERNAL_ERROR, f"local Cloud Build internal error: {error!r}")
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
            if internal:
                self._children.run(self._storage.rmi(*internal), owner=f"cleanup-{build_id}", timeout=120)
        self._finish(build, outcome)

    def _command(
        self, argv: Sequence[str], build_id: str, deadline: float, log_file: IO[str], cwd: Path | None = None
    ) -> CommandResult:
        self._check(build_id, deadline)
        result = self._children.run(
            argv, owner=build_id, timeout=deadline - time.monotonic(), log_file=log_file, cwd=cwd
        )
        if result.timed_out:
            raise _TimedOut
        if result.cancelled:
            raise _Cancelled
        return result

    def _execute(
        self, build: cloudbuild.Build, workspace: Path, log_file: IO[str], deadline: float, internal: list[str]
    ) -> _Outcome:
        fetched = _now()
        failure = self._fetch_source(build, workspace, log_file)
        build.timing["FETCHSOURCE"] = _span(fetched)
        if failure is not None:
            return failure
        self._store.put(build)
        values = {
            "PROJECT_ID": build.project_id,
            "BUILD_ID": build.id,
            "LOCATION": build.name.split("/")[3] if build.name.count("/") >= 5 else "global",
            **dict(build.substitutions),
        }
        built: dict[str, str] = {}  # requested image (qualified) -> internal name in storage
        steps_started = _now()
        for index, step in enumerate(build.steps):
            self._check(build.id, deadline)
            started = _now()
            step.status = WORKING
            step.timing = cloudbuild.TimeSpan(start_time=started)
            self._store.put(build)
            log_file.write(f"Step #{index} ({step.name} {' '.join(step.args)})\n")
            failure = self._run_step(build, index, values, workspace, log_file, deadline, built, internal)
            step.timing = _span(started)
            step.status = FAILURE if failure else SUCCESS
            self._store.put(build)
            if failure is not None:
                return failure
        build.timing["BUILD"] = _span(steps_started)
        pushed = _now()
        for requested in build.images:
            image = substitute(requested, values)
            source = built.get(qualified(image))
            if source is None:
                detail = f"image {image} was not built by any step, so it cannot be pushed"
                return _Outcome(FAILURE, detail, PUSH_IMAGE_NOT_FOUND)
            started = _now()
            digest, result = self._push(source, image, build.id, deadline, log_file)
            if digest is None:
                return _Outcome(FAILURE, f"failed to push {image}: {result.tail(3)}", PUSH_FAILED)
            build.results.images.append(cloudbuild.BuiltImage(name=image, digest=digest, push_timing=_span(started)))
        if build.images:
            build.timing["PUSH"] = _span(pushed)
        return _Outcome(SUCCESS)

    def _fetch_source(self, build: cloudbuild.Build, workspace: Path, log_file: IO[str]) -> _Outcome | None:
        source = build.source.storage_source
        where = f"gs://{source.bucket}/{source.object_}"
        if not source.bucket or not source.object_:
            return _Outcome(
                FAILURE,
                "build has no storage_source; the local Cloud Build only fetches sources from GCS",
                FETCH_SOURCE_FAILED,
            )
        from google.api_core import exceptions as api_exceptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud.storage import Client as StorageClient

        archive = workspace.with_name(f"{workspace.name}.source")
        workspace.mkdir(parents=True, exist_ok=True)
        log_file.write(f"Fetching storage object: {where}\n")
        try:
            client = StorageClient(project=build.project_id, credentials=AnonymousCredentials())  # type: ignore[no-untyped-call]
            blob = client.bucket(source.bucket).blob(source.object_, generation=source.generation or None)
            blob.download_to_filename(str(archive))
        except api_exceptions.NotFound:
            return _Outcome(FAILURE, f"failed to fetch source: {where}: object not found", FETCH_SOURCE_FAILED)
        except Exception as error:  # transport or API error: the build's failure reason
            return _Outcome(FAILURE, f"failed to fetch source {where}: {error}", FETCH_SOURCE_FAILED)
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zipped:
                    for member in zipped.namelist():
                        if not (workspace / member).resolve().is_relative_to(workspace.resolve()):
                            raise ValueError(f"archive member escapes the workspace: {member}")
                    zipped.extractall(workspace)
            else:
                with tarfile.open(archive, "r:*") as tar:
                    tar.extractall(workspace, filter="data")
        except (tarfile.TarError, zipfile.BadZipFile, ValueError, OSError) as error:
            return _Outcome(FAILURE, f"failed to unpack source {where}: {error}", FETCH_SOURCE_FAILED)
        finally:
            archive.unlink(missing_ok=True)
        build.source_provenance.resolved_storage_source = cloudbuild.StorageSource(
            bucket=source.bucket, object_=source.object_, generation=source.generation
        )
        return None

    def _run_step(
        self,
        build: cloudbuild.Build,
        index: int,
        values: dict[str, str],
        workspace: Path,
        log_file: IO[str],
        deadline: float,
        built: dict[str, str],
        internal: list[str],
    ) -> _Outcome | None:
        step = build.steps[index]
        prefix = f'Build step failure: build step {index} "{step.name}" failed'
        try:
            command = parse_docker_step(step.name, step.entrypoint, [substitute(arg, values) for arg in step.args])
            cwd = (workspace / substitute(step.dir_, values)).resolve()
            if not cwd.is_relative_to(workspace.resolve()) or not cwd.is_dir():
                raise StepError(f"step dir {step.dir_!r} is not a directory in the workspace")
        except StepError as error:
            return _Outcome(FAILURE, f"{prefix}: {error}", USER_BUILD_STEP)
        if isinstance(command, DockerBuild):
            context = (cwd / command.context).resolve()
            if not context.is_dir():
                return _Outcome(
                    FAILURE, f"{prefix}: unable to prepare context: path {command.context!r} not found", USER_BUILD_STEP
                )
            dockerfile = (cwd / command.dockerfile) if command.dockerfile else None
            names = [
                f"localhost/cd4ml-local-build/{build.id}:step{index}-{n}" for n in range(max(1, len(command.tags)))
            ]
            internal.extend(names)
            result = self._command(
                self._storage.bud(context=context, dockerfile=dockerfile, tags=names, options=command.options),
                build.id,
                deadline,
                log_file,
                cwd=cwd,
            )
            if not result.ok:
                return _Outcome(
                    FAILURE,
                    f"{prefix}: step exited with non-zero status: {result.returncode}: {_reason(result)}",
                    USER_BUILD_STEP,
                )
            for tag, name in zip(command.tags, names, strict=False):
                built[qualified(tag)] = name
        elif isinstance(command, DockerTag):
            source = built.get(qualified(command.source))
            if source is None:
                return _Outcome(FAILURE, f"{prefix}: No such image: {command.source}", USER_BUILD_STEP)
            built[qualified(command.target)] = source
        elif isinstance(command, DockerPush):
            source = built.get(qualified(command.image))
            if source is None:
                return _Outcome(
                    FAILURE, f"{prefix}: An image does not exist locally with the tag: {command.image}", USER_BUILD_STEP
                )
            digest, result = self._push(source, command.image, build.id, deadline, log_file)
            if digest is None:
                return _Outcome(FAILURE, f"{prefix}: push of {command.image} failed: {result.tail(3)}", USER_BUILD_STEP)
        return None

    def _push(
        self, source: str, image: str, build_id: str, deadline: float, log_file: IO[str]
    ) -> tuple[str | None, CommandResult]:
        """Push an image from storage to its registry; return the manifest digest the registry stored."""
        digest_file = self._work / f"{build_id}.{uuid.uuid4().hex}.digest"
        try:
            result = self._command(
                self._storage.copy(self._storage.reference(source), f"docker://{image}", digest_file=digest_file),
                build_id,
                deadline,
                log_file,
            )
            digest = digest_file.read_text(encoding="utf-8").strip() if result.ok and digest_file.exists() else None
        finally:
            digest_file.unlink(missing_ok=True)
        if digest:
            log_file.write(f"{image}: digest: {digest}\n")
        return digest or None, result


def invalid_build(build: cloudbuild.Build) -> list[str]:
    """What the real API would refuse in a CreateBuild request (the subset callers can get wrong)."""
    problems = []
    if not build.steps:
        problems.append("build must have at least one step")
    problems += [f"invalid build tag {tag!r}: must match {_TAG.pattern}" for tag in build.tags if not _TAG.match(tag)]
    problems += [
        f"invalid substitution key {key!r}: user substitutions must match {_USER_SUBSTITUTION.pattern}"
        for key in build.substitutions
        if not _USER_SUBSTITUTION.match(key)
    ]
    return problems


def _reason(result: CommandResult) -> str:
    """The one line that says why buildah failed, with a hint when FROM named an image it cannot pull."""
    errors = [line.strip() for line in result.output.splitlines() if line.strip().startswith("Error")]
    reason = errors[-1] if errors else result.tail(3)
    if "image not known" in reason:
        reason += " (the local Cloud Build never pulls: make the base image available with --base-image NAME=SOURCE)"
    return reason


class CloudBuildService:
    """The gRPC methods: CreateBuild, GetBuild, ListBuilds, CancelBuild, and Operations.GetOperation."""

    def __init__(
        self,
        settings: Settings,
        store: BuildStore,
        runner: BuildRunner,
        executor: futures.ThreadPoolExecutor,
        notify: Callable[[cloudbuild.Build], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._runner = runner
        self._executor = executor
        self._notify = notify

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        unary = grpc.unary_unary_rpc_method_handler
        build_service = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "CreateBuild": unary(
                    self.create_build,
                    request_deserializer=cloudbuild.CreateBuildRequest.deserialize,
                    response_serializer=operations_pb2.Operation.SerializeToString,
                ),
                "GetBuild": unary(
                    self.get_build,
                    request_deserializer=cloudbuild.GetBuildRequest.deserialize,
                    response_serializer=cloudbuild.Build.serialize,
                ),
                "ListBuilds": unary(
                    self.list_builds,
                    request_deserializer=cloudbuild.ListBuildsRequest.deserialize,
                    response_serializer=cloudbuild.ListBuildsResponse.serialize,
                ),
                "CancelBuild": unary(
                    self.cancel_build,
                    request_deserializer=cloudbuild.CancelBuildRequest.deserialize,
                    response_serializer=cloudbuild.Build.serialize,
                ),
            },
        )
        operations = grpc.method_handlers_generic_handler(
            OPERATIONS_SERVICE,
            {
                "GetOperation": unary(
                    self.get_operation,
                    request_deserializer=operations_pb2.GetOperationRequest.FromString,
                    response_serializer=operations_pb2.Operation.SerializeToString,
                ),
            },
        )
        return [build_service, operations]

    def _operation(self, build: cloudbuild.Build) -> operations_pb2.Operation:
        metadata = any_pb2.Any()
        metadata.Pack(cloudbuild.BuildOperationMetadata.pb(cloudbuild.BuildOperationMetadata(build=build)))
        operation = operations_pb2.Operation(
            name=operation_name(build.project_id, build.id), metadata=metadata, done=build.status in TERMINAL
        )
        if build.status == SUCCESS:
            operation.response.Pack(cloudbuild.Build.pb(build))
        elif build.status in TERMINAL:
            operation.error.CopyFrom(
                status_pb2.Status(
                    code=grpc.StatusCode.UNKNOWN.value[0], message=build.status_detail or f"Build {build.status.name}"
                )
            )
        return operation

    def create_build(
        self, request: cloudbuild.CreateBuildRequest, context: grpc.ServicerContext
    ) -> operations_pb2.Operation:
        project, location = _project_and_location(request.parent, request.project_id)
        if not project:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "project_id or parent is required")
        build = _copy(request.build)
        problems = invalid_build(build)
        if problems:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid build: " + "; ".join(problems))
        build.id = str(uuid.uuid4())
        build.project_id = project
        build.name = f"projects/{project}/locations/{location}/builds/{build.id}"
        build.status = QUEUED
        build.create_time = _now()
        if build.timeout.total_seconds() <= 0:
            build.timeout = _DEFAULT_TIMEOUT
        if build.queue_ttl.total_seconds() <= 0:
            build.queue_ttl = timedelta(hours=1)
        build.log_url = self._runner.log_path(build.id).resolve().as_uri()
        for step in build.steps:
            step.status = QUEUED
        self._store.put(build)
        self._notify(build)
        _log.info(
            "build queued",
            extra={"build_id": build.id, "project": project, "tags": list(build.tags), "images": list(build.images)},
        )
        self._executor.submit(self._runner.run, build.id)
        return self._operation(build)

    def _find(self, project: str, build_id: str, context: grpc.ServicerContext) -> cloudbuild.Build:
        build = self._store.get(build_id) if build_id else None
        if build is None or (project and build.project_id != project):
            context.abort(grpc.StatusCode.NOT_FOUND, f"build {build_id!r} not found")
        assert build is not None
        return build

    def get_build(self, request: cloudbuild.GetBuildRequest, context: grpc.ServicerContext) -> cloudbuild.Build:
        project, _ = _project_and_location(request.name, request.project_id)
        return self._find(project, _id_from_name(request.name, request.id), context)

    def cancel_build(self, request: cloudbuild.CancelBuildRequest, context: grpc.ServicerContext) -> cloudbuild.Build:
        project, _ = _project_and_location(request.name, request.project_id)
        build = self._find(project, _id_from_name(request.name, request.id), context)
        cancelled = self._runner.cancel(build.id)
        return cancelled if cancelled is not None else build

    def list_builds(
        self, request: cloudbuild.ListBuildsRequest, context: grpc.ServicerContext
    ) -> cloudbuild.ListBuildsResponse:
        project, _ = _project_and_location(request.parent, request.project_id)
        try:
            matches = parse_filter(request.filter)
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        builds = [
            build
            for build in self._store.all()
            if build.project_id == project
            and matches(
                {
                    "tags": list(build.tags),
                    "images": list(build.images),
                    "status": build.status.name,
                    "id": build.id,
                    "trigger_id": build.build_trigger_id,
                    "project_id": build.project_id,
                }
            )
        ]
        builds.sort(key=lambda build: build.create_time, reverse=True)
        offset = int(request.page_token) if request.page_token.isdigit() else 0
        size = request.page_size if request.page_size > 0 else len(builds)
        page = builds[offset : offset + size]
        next_token = str(offset + size) if offset + size < len(builds) else ""
        return cloudbuild.ListBuildsResponse(builds=page, next_page_token=next_token)

    def get_operation(self, request: Any, context: grpc.ServicerContext) -> operations_pb2.Operation:
        build_id = build_id_of_operation(str(request.name))
        build = self._store.get(build_id) if build_id else None
        if build is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"operation {request.name!r} not found")
        assert build is not None
        return self._operation(build)


def _base_references(settings: Settings) -> dict[str, list[str]]:
    """Each --base-image source as a containers-image reference, with the names FROM may use for it."""
    spec = baseimage.BaseImageSpec(packages=settings.base_packages)
    by_source: dict[str, list[str]] = {}
    for name, source in settings.base_images:
        if source == "debian":
            started = time.monotonic()
            image = baseimage.ensure_base_image(spec, settings.base_cache_dir)
            elapsed = round(time.monotonic() - started, 2)
            _log.info("base image ready", extra={"layout": str(image.layout), "seconds": elapsed})
            reference = image.reference
        elif Path(source).is_dir():
            reference = f"oci:{source}"
        else:
            reference = source
        by_source.setdefault(reference, []).append(name)
    return by_source


def _probe(storage: ImageStorage, base: str, children: ChildGroups, scratch: Path) -> CommandResult:
    """Build FROM base + COPY once: proves the driver can mount and commit here."""
    context = scratch / f"probe-{storage.driver}"
    context.mkdir(parents=True, exist_ok=True)
    (context / "probe.txt").write_text("probe\n", encoding="utf-8")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY probe.txt /probe.txt\n", encoding="utf-8")
    tag = "localhost/cd4ml-local-build/probe:latest"
    result = children.run(
        storage.bud(context=context, dockerfile=None, tags=[tag], options=()), owner="probe", timeout=120
    )
    children.run(storage.rmi(tag), owner="probe", timeout=60)
    shutil.rmtree(context, ignore_errors=True)
    return result


def prepare_storage(settings: Settings, children: ChildGroups) -> ImageStorage:
    """Image storage holding every --base-image, so FROM never needs a network.

    `auto` tries the overlay driver (a FROM+COPY build in ~0.3 s) and falls back to vfs (~3 s, but it
    works without overlay mounts) when a probe build fails.
    """
    references = _base_references(settings)
    drivers = ("overlay", "vfs") if settings.storage_driver == "auto" else (settings.storage_driver,)
    failure = ""
    for driver in drivers:
        storage = ImageStorage.under(settings.state_dir, driver)
        children.run(storage.buildah("rm", "--all"), owner="startup", timeout=60)  # leftovers of a killed run
        try:
            for reference, names in references.items():
                started = time.monotonic()
                baseimage.import_image(reference, names, storage, children)
                elapsed = round(time.monotonic() - started, 2)
                _log.info("base image imported", extra={"source": reference, "names": names, "seconds": elapsed})
        except baseimage.BaseImageError as error:
            failure = str(error)
        else:
            if not references:
                return storage
            probe = _probe(storage, settings.base_images[0][0], children, settings.state_dir / "workspaces")
            if probe.ok:
                _log.info("image storage ready", extra={"driver": driver, "probe_seconds": round(probe.seconds, 2)})
                return storage
            failure = probe.tail(3)
        _log.warning("image storage driver unusable here", extra={"driver": driver, "error": failure})
    raise baseimage.BaseImageError(f"no usable image storage: {failure}")


def serve(settings: Settings, stop: threading.Event) -> int:
    """Run the server until stop is set; return the process exit code."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    children = ChildGroups()
    try:
        storage = prepare_storage(settings, children)
    except baseimage.BaseImageError as error:
        _log.error("base images unavailable", extra={"error": str(error)})
        return 1
    if stop.is_set():
        return 0
    publisher = OrderedPublisher(TopicPublisher(settings.project, settings.topic), _log)

    def notify(build: cloudbuild.Build) -> None:
        publisher.submit(build_json(build).encode(), {"buildId": build.id, "status": build.status.name})

    store = BuildStore(settings.state_dir / "builds")
    runner = BuildRunner(settings, store, storage, children, notify)
    for build in store.load():
        build.status = INTERNAL_ERROR
        build.status_detail = "local Cloud Build restarted while the build was queued or running"
        build.finish_time = _now()
        store.put(build)
        notify(build)
    executor = futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="build")
    service = CloudBuildService(settings, store, runner, executor, notify)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc"))
    server.add_generic_rpc_handlers(service.handlers())
    bound = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if bound == 0:
        _log.error("cannot bind", extra={"host": settings.host, "port": settings.port})
        return 1
    server.start()
    _log.info(
        "ready",
        extra={"address": f"{settings.host}:{bound}", "project": settings.project, "topic": publisher_topic(settings)},
    )
    stop.wait()
    _log.info("stopping")
    server.stop(grace=1.0).wait(2.0)
    runner.stopping = True
    children.close()
    executor.shutdown(wait=True, cancel_futures=True)
    # Unmount and remove working containers a killed buildah may have left (overlay mounts outlive it).
    subprocess.run(storage.buildah("rm", "--all"), capture_output=True, check=False, timeout=60)
    for build in store.all():
        if build.status == QUEUED:
            build.status = INTERNAL_ERROR
            build.status_detail = "local Cloud Build stopped before the build ran"
            build.finish_time = _now()
            store.put(build)
            notify(build)
    publisher.close(timeout=3.0)
    _log.info("stopped")
    return 0


def publisher_topic(settings: Settings) -> str:
    return f"projects/{settings.project}/topics/{settings.topic}"


def _base_image(text: str) -> tuple[str, str]:
    name, sep, source = text.partition("=")
    if not sep or not name or not source:
        raise argparse.ArgumentTypeError("expected NAME=SOURCE, e.g. python:3.11-slim=debian")
    return name, source


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m local_emulator.cloudbuild", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="builds, logs, workspaces and image storage")
    parser.add_argument("--project", required=True, help="project whose cloud-builds topic receives status messages")
    parser.add_argument("--topic", default="cloud-builds")
    parser.add_argument(
        "--base-image",
        type=_base_image,
        action="append",
        dest="base_images",
        metavar="NAME=SOURCE",
        help="make FROM NAME resolve to SOURCE: `debian` (built from Debian packages), an OCI layout directory, "
        "or any containers-image reference (oci:DIR:REF, docker-archive:FILE, ...). Default: python:3.11-slim=debian",
    )
    parser.add_argument("--base-cache-dir", type=Path, default=baseimage.default_cache_dir())
    parser.add_argument(
        "--base-package",
        action="append",
        dest="base_packages",
        help="Debian package of the `debian` base (repeat; default python3 dash coreutils)",
    )
    parser.add_argument("--workers", type=int, default=2, help="builds run at once")
    parser.add_argument(
        "--storage-driver",
        choices=("auto", "overlay", "vfs"),
        default="auto",
        help="containers-storage driver; auto = overlay if a probe build works here, else vfs",
    )
    args = parser.parse_args(argv)
    return Settings(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        project=args.project,
        topic=args.topic,
        base_images=tuple(args.base_images) if args.base_images else DEFAULT_BASE_IMAGES,
        base_cache_dir=args.base_cache_dir,
        base_packages=tuple(args.base_packages) if args.base_packages else baseimage.BaseImageSpec.packages,
        workers=args.workers,
        storage_driver=args.storage_driver,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    configure_logging("cloudbuild")
    stop = stop_event_on_signals()
    require_env("PUBSUB_EMULATOR_HOST", _log)
    require_env("STORAGE_EMULATOR_HOST", _log)
    return serve(settings, stop)


if __name__ == "__main__":
    raise SystemExit(main())
