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

Requests Cloud Build refuses are refused with its INVALID_ARGUMENT messages before anything runs
(`_build_validation`); the other parts: `_build_service` (gRPC), `_build_store`, `_build_runner` with
`_build_source`, `_build_steps` and `_build_buildah`, and `_build_storage_driver`.

It listens only once its base images are in its storage (first start ~10 s to make the Debian base, then
~2 s), so an open port means ready. Needs PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.cloud.devtools.cloudbuild_v1.types import cloudbuild

from local_emulator.cloudbuild.runner import BuildRunner
from local_emulator.cloudbuild.service import CloudBuildService
from local_emulator.cloudbuild.storage_driver import prepare_storage
from local_emulator.cloudbuild.store import INTERNAL_ERROR, QUEUED, BuildStore, build_json, now
from local_emulator.common import faults
from local_emulator.common.service import (
    ChildGroups,
    OrderedPublisher,
    TopicPublisher,
    configure_logging,
    require_env,
    stop_event_on_signals,
)
from local_emulator.containers import baseimage

__all__ = ["Settings", "build_json", "main", "parse_args", "serve"]

DEFAULT_BASE_IMAGES: tuple[tuple[str, str], ...] = (("python:3.11-slim", "debian"),)

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
    token_key: Path | None = None  # the stack's access-token key: pushes then authenticate as the build's account


def _identities(project: str) -> Callable[[str], str | None]:
    """A build's service account → its stack identity; None for an account the IAM bindings do not know (Cloud
    Build's legacy default account among them) and for the admin."""
    from local_emulator.iam import policy as iam_policy

    policy = iam_policy.load(project, "", "")
    identities = {policy.principal(identity): identity for identity in policy.identities()}

    def identity_of(service_account: str) -> str | None:
        email = service_account.rsplit("/", 1)[-1]
        identity = identities.get(email)
        if (
            identity is None
            and email.startswith("cd4ml-build-")
            and email.endswith(f"@{project}.iam.gserviceaccount.com")
        ):
            identity = f"build:{email.split('@', 1)[0]}"  # a model's own build account (iam_policy.MODEL_BUILD)
        return None if identity == iam_policy.ADMIN else identity

    return identity_of


def push_credentials(project: str, token_key: Path) -> Callable[[str], str | None]:
    """``oauth2accesstoken:TOKEN`` of a build's service account, as Cloud Build's pusher uses its access token
    (https://cloud.google.com/artifact-registry/docs/docker/authentication#token); None for an account the IAM
    bindings do not know (Cloud Build's legacy default account among them): the push then goes unauthenticated
    and a registry with token auth refuses it."""
    from local_emulator.iam.access_tokens import Minter

    minter = Minter.from_file(token_key)
    identity_of = _identities(project)

    def credentials(service_account: str) -> str | None:
        identity = identity_of(service_account)
        return None if identity is None else f"oauth2accesstoken:{minter.mint(identity)}"

    return credentials


def step_metadata(project: str, token_key: Path) -> Callable[[str], AbstractContextManager[Path | None]]:
    """For a build's service account, its metadata server (``network.serve_metadata``) while the build runs:
    every step on the ``cloudbuild`` network gets that account's token, as on Cloud Build. None (no server, nothing
    at 169.254.169.254) for an account the stack does not know."""
    from local_emulator.cloudbuild.network import serve_metadata
    from local_emulator.iam.access_tokens import Minter

    minter = Minter.from_file(token_key)
    identity_of = _identities(project)

    def metadata(service_account: str) -> AbstractContextManager[Path | None]:
        identity = identity_of(service_account)
        if identity is None:
            return nullcontext(None)
        return serve_metadata(identity, service_account.rsplit("/", 1)[-1], project, minter)

    return metadata


def serve(settings: Settings, stop: threading.Event) -> int:
    """Run the server until stop is set; return the process exit code."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    children = ChildGroups()
    try:
        storage = prepare_storage(
            settings.state_dir,
            children,
            base_images=settings.base_images,
            cache_dir=settings.base_cache_dir,
            packages=settings.base_packages,
            driver=settings.storage_driver,
        )
    except baseimage.BaseImageError as error:
        _log.error("base images unavailable", extra={"error": str(error)})
        return 1
    if stop.is_set():
        return 0
    publisher = OrderedPublisher(TopicPublisher(settings.project, settings.topic), _log)

    def notify(build: cloudbuild.Build) -> None:
        publisher.submit(build_json(build).encode(), {"buildId": build.id, "status": build.status.name})

    store = BuildStore(settings.state_dir / "builds")
    credentials = push_credentials(settings.project, settings.token_key) if settings.token_key else None
    metadata = step_metadata(settings.project, settings.token_key) if settings.token_key else None
    runner = BuildRunner(settings.state_dir, store, storage, children, notify, credentials, metadata)
    for build in store.load():
        build.status = INTERNAL_ERROR
        build.status_detail = "local Cloud Build restarted while the build was queued or running"
        build.finish_time = now()
        store.put(build)
        notify(build)
    executor = futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="build")
    service = CloudBuildService(store, runner, executor, notify)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc"),
        interceptors=[faults.outage_interceptor("cloudbuild")],
    )
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
            build.finish_time = now()
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
    parser.add_argument(
        "--token-key", type=Path, default=None, help="the stack's access-token key (pushes authenticate)"
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
        token_key=args.token_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    configure_logging("cloudbuild")
    stop = stop_event_on_signals()
    require_env("PUBSUB_EMULATOR_HOST", _log)
    require_env("STORAGE_EMULATOR_HOST", _log)
    return serve(settings, stop)
