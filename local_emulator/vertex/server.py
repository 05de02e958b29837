"""A local Vertex AI stand-in: a gRPC JobService that runs CustomJobs as local subprocesses.

It answers the calls cd4ml makes with the unchanged client::

    aiplatform_v1.JobServiceClient(
        transport=JobServiceGrpcTransport(channel=grpc.insecure_channel("127.0.0.1:PORT")))

CreateCustomJob, GetCustomJob, ListCustomJobs (filter ``labels.KEY="VALUE"``, ``labels.KEY:*``,
``display_name="…"``, ``state=JOB_STATE_…``, AND-combined; everything in one page) and
CancelCustomJob; other JobService methods answer UNIMPLEMENTED. Errors are those of Vertex:
INVALID_ARGUMENT for a bad request, NOT_FOUND for an unknown job, FAILED_PRECONDITION when
cancelling a finished job.

A job goes QUEUED → PENDING (package download and install) → RUNNING → SUCCEEDED, FAILED or
CANCELLED. A python_package trainer runs in a clean cached virtual environment holding only its
executor image's framework pins and what its package declares (``envs``, ``images``:
only Vertex's prebuilt training containers are accepted); a container_spec job runs in its image,
which must come from the local registry (``--registry``). The trainer gets only Vertex's environment
(AIP_MODEL_DIR, CLUSTER_SPEC, …) plus the spec's env and STORAGE_EMULATOR_HOST: see ``runner``.

Run it with ``python -m local_emulator.vertex --host 127.0.0.1 --port P --state-dir DIR
[--max-concurrent 2] [--cache-dir DIR] [--registry HOST:PORT]``: it logs JSON lines to stderr, prints nothing else, and on SIGTERM or
SIGINT cancels every unfinished job, kills the trainers' process groups and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import grpc
from google.cloud import aiplatform_v1
from google.protobuf import empty_pb2

from local_emulator.common import faults
from local_emulator.common.service import configure_logging, stop_event_on_signals
from local_emulator.vertex.envs import default_cache_dir
from local_emulator.vertex.jobs import JobTable
from local_emulator.vertex.requests import (
    InvalidRequest,
    JobFilter,
    JobNotCancellable,
    JobNotFound,
    ServiceClosing,
    parse_parent,
)

SERVICE = "google.cloud.aiplatform.v1.JobService"
DEFAULT_MAX_CONCURRENT = 2
REGISTRY_ENV = "VERTEX_LOCAL_REGISTRY"
_RPC_THREADS = 8

_log = logging.getLogger("local_emulator.vertex")

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class VertexServer:
    """A running stand-in: its gRPC server, the port it listens on, and its job table."""

    server: grpc.Server
    host: str
    port: int
    jobs: JobTable

    @property
    def address(self) -> str:
        """``host:port``, ready for ``grpc.insecure_channel``."""
        return f"{self.host}:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        """Stop answering RPCs, cancel unfinished jobs and kill their trainers; returns when all are gone."""
        self.server.stop(grace).wait()
        self.jobs.close()
        _log.info("stopped", extra={"address": self.address})


def serve(
    host: str,
    port: int,
    state_dir: Path,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    *,
    environ: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    registry: str | None = None,
) -> VertexServer:
    """Start the stand-in on host:port (0 picks a free port) and return at once.

    ``environ`` is where ``STORAGE_EMULATOR_HOST`` is looked up (for the package downloads and the
    trainer) and what pip runs with; it defaults to this process's environment. ``cache_dir`` holds
    the trainer environments (default ``~/.cache/cd4ml``); ``registry`` is the local registry's
    ``host:port``, the only source of container_spec images.
    """
    jobs = JobTable(
        state_dir,
        max_concurrent,
        os.environ if environ is None else environ,
        cache_dir=default_cache_dir() if cache_dir is None else cache_dir,
        registry=registry,
    )
    # No SO_REUSEPORT: a second server on a busy port must fail, not silently share it.
    server = grpc.server(
        ThreadPoolExecutor(max_workers=_RPC_THREADS, thread_name_prefix="vertex-rpc"),
        options=[("grpc.so_reuseport", 0)],
        interceptors=[faults.outage_interceptor("vertex")],
    )
    server.add_generic_rpc_handlers((_job_service(jobs),))
    try:
        bound = int(server.add_insecure_port(f"{host}:{port}"))
    except RuntimeError as exc:
        jobs.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
    server.start()
    _log.info(
        "serving", extra={"address": f"{host}:{bound}", "state_dir": str(state_dir), "max_concurrent": max_concurrent}
    )
    return VertexServer(server, host, bound, jobs)


def _job_service(jobs: JobTable) -> grpc.GenericRpcHandler:
    """The JobService methods, on proto-plus (de)serializers so the real client's bytes round-trip."""

    def create(request: aiplatform_v1.CreateCustomJobRequest) -> aiplatform_v1.CustomJob:
        job = jobs.create(parse_parent(request.parent), request.custom_job)
        faults.effect_done("vertex.create", job.labels.values())
        return job

    def get(request: aiplatform_v1.GetCustomJobRequest) -> aiplatform_v1.CustomJob:
        return jobs.get(request.name)

    def list_jobs(request: aiplatform_v1.ListCustomJobsRequest) -> aiplatform_v1.ListCustomJobsResponse:
        where = parse_parent(request.parent)
        return aiplatform_v1.ListCustomJobsResponse(custom_jobs=jobs.select(where, JobFilter.parse(request.filter)))

    def cancel(request: aiplatform_v1.CancelCustomJobRequest) -> empty_pb2.Empty:
        jobs.cancel(request.name)
        return empty_pb2.Empty()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "CreateCustomJob": _unary(
                create, aiplatform_v1.CreateCustomJobRequest.deserialize, aiplatform_v1.CustomJob.serialize
            ),
            "GetCustomJob": _unary(
                get, aiplatform_v1.GetCustomJobRequest.deserialize, aiplatform_v1.CustomJob.serialize
            ),
            "ListCustomJobs": _unary(
                list_jobs,
                aiplatform_v1.ListCustomJobsRequest.deserialize,
                aiplatform_v1.ListCustomJobsResponse.serialize,
            ),
            "CancelCustomJob": _unary(
                cancel, aiplatform_v1.CancelCustomJobRequest.deserialize, empty_pb2.Empty.SerializeToString
            ),
        },
    )


def _unary(
    behaviour: Callable[[_Request], _Response],
    deserialize: Callable[[bytes], _Request],
    serialize: Callable[[_Response], bytes],
) -> grpc.RpcMethodHandler:
    """A unary handler that turns the stand-in's errors into Vertex's status codes."""

    def handle(request: _Request, context: grpc.ServicerContext) -> _Response:
        try:
            return behaviour(request)
        except InvalidRequest as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except JobNotFound as exc:
            _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except JobNotCancellable as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except ServiceClosing as exc:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=deserialize, response_serializer=serialize)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    _log.info("rpc rejected", extra={"code": code.name, "error": message})
    context.abort(code, message)
    raise AssertionError("grpc.ServicerContext.abort returned")  # it always raises


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local_emulator.vertex",
        description="Local Vertex AI stand-in: a gRPC JobService running CustomJobs as subprocesses.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0 picks one)")
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where job records, packages and trainer logs are kept"
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULT_MAX_CONCURRENT,
        help=f"jobs running at once; others stay queued (default {DEFAULT_MAX_CONCURRENT})",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where clean trainer environments are cached (default ~/.cache/cd4ml)",
    )
    parser.add_argument(
        "--registry",
        default=os.environ.get(REGISTRY_ENV) or None,
        help=f"host:port of the local registry, the only source of container_spec images (env {REGISTRY_ENV})",
    )
    args = parser.parse_args(argv)
    if args.max_concurrent < 1:
        parser.error("--max-concurrent must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stand-in until SIGTERM or SIGINT."""
    args = _parse_args(argv)
    configure_logging("vertex")
    stop = stop_event_on_signals()
    running = serve(
        args.host, args.port, args.state_dir, args.max_concurrent, cache_dir=args.cache_dir, registry=args.registry
    )
    while not stop.wait(1.0):
        pass
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
