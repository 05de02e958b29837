"""The gRPC face of the local Cloud Build: CreateBuild, GetBuild, ListBuilds, CancelBuild, Operations.GetOperation."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from concurrent import futures
from datetime import timedelta
from typing import Any

import grpc
from google.cloud.devtools.cloudbuild_v1.types import cloudbuild
from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.rpc import status_pb2

from local_emulator.cloudbuild.runner import DEFAULT_TIMEOUT, BuildRunner
from local_emulator.cloudbuild.steps import parse_filter, substitute
from local_emulator.cloudbuild.store import QUEUED, SUCCESS, TERMINAL, BuildStore, copy_build, now
from local_emulator.cloudbuild.validation import InvalidBuild, builtin_values, validate
from local_emulator.common import faults

SERVICE = "google.devtools.cloudbuild.v1.CloudBuild"
OPERATIONS_SERVICE = "google.longrunning.Operations"

_log = logging.getLogger("cloudbuild")


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


def accept(request: cloudbuild.CreateBuildRequest, project: str, location: str) -> cloudbuild.Build:
    """The Build as Cloud Build stores it when it accepts the request; raise InvalidBuild if it refuses it."""
    build = copy_build(request.build)
    build.id = str(uuid.uuid4())
    build.project_id = project
    build.name = f"projects/{project}/locations/{location}/builds/{build.id}"
    values = builtin_values(build, project, location)
    validate(build, values)
    # Tags are stored substituted, without empty or repeated ones (validate.go sanitizeBuildTags).
    tags = [tag for tag in (substitute(tag, values) for tag in build.tags) if tag]
    build.tags = list(dict.fromkeys(tags))
    build.status = QUEUED
    build.create_time = now()
    if build.timeout.total_seconds() <= 0:
        build.timeout = DEFAULT_TIMEOUT
    if build.queue_ttl.total_seconds() <= 0:
        build.queue_ttl = timedelta(hours=1)
    for step in build.steps:
        step.status = QUEUED
    return build


class CloudBuildService:
    """The gRPC methods: CreateBuild, GetBuild, ListBuilds, CancelBuild, and Operations.GetOperation."""

    def __init__(
        self,
        store: BuildStore,
        runner: BuildRunner,
        executor: futures.ThreadPoolExecutor,
        notify: Callable[[cloudbuild.Build], None],
    ) -> None:
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
        try:
            build = accept(request, project, location)
        except InvalidBuild as error:
            _log.info("build refused", extra={"project": project, "error": str(error)})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        build.log_url = self._runner.log_path(build.id).resolve().as_uri()
        self._store.put(build)
        self._notify(build)
        _log.info(
            "build queued",
            extra={"build_id": build.id, "project": project, "tags": list(build.tags), "images": list(build.images)},
        )
        self._executor.submit(self._runner.run, build.id)
        faults.effect_done("cloudbuild.create", [t.removeprefix("cd4ml-run-") for t in build.tags])
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
