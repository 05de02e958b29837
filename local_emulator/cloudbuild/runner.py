"""Runs builds of the local Cloud Build: fetch the source, run the docker steps with buildah, push with skopeo."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild

from local_emulator.cloudbuild.container_step import ContainerStep, run_docker, run_step, step_image, unsupported
from local_emulator.cloudbuild.source import SourceError, fetch_source
from local_emulator.cloudbuild.steps import (
    DOCKER_BUILDERS,
    DockerBuild,
    DockerPush,
    DockerRun,
    DockerTag,
    StepError,
    builder_name,
    parse_docker_step,
    substitute,
)
from local_emulator.cloudbuild.store import (
    CANCELLED,
    FAILURE,
    FETCH_SOURCE_FAILED,
    INTERNAL_ERROR,
    PUSH_FAILED,
    PUSH_IMAGE_NOT_FOUND,
    QUEUED,
    SUCCESS,
    TERMINAL,
    TIMEOUT,
    USER_BUILD_STEP,
    WORKING,
    BuildStore,
    FailureType,
    Status,
    now,
    span,
)
from local_emulator.cloudbuild.validation import builtin_values
from local_emulator.common.service import ChildGroups, CommandResult
from local_emulator.containers.buildah import ImageStorage, qualified

#: cloudbuild.proto Build.timeout: "Default time is 60 minutes."
DEFAULT_TIMEOUT = timedelta(minutes=60)

_log = logging.getLogger("cloudbuild")
#: What a layer-cache image name keeps of a repository (containers-storage names: lower case, no port colon).
_CACHE_NAME = re.compile(r"[^a-z0-9._/-]+")


@dataclass(frozen=True)
class Outcome:
    """How a build ended, before it is written onto the Build."""

    status: Status
    detail: str = ""
    failure_type: FailureType | None = None


class _Cancelled(Exception):
    """The build was cancelled, or the server is stopping."""


class _TimedOut(Exception):
    """The build ran past its timeout."""


def location_of(build: cloudbuild.Build) -> str:
    """L of `projects/P/locations/L/builds/ID`."""
    parts = build.name.split("/")
    return parts[3] if len(parts) >= 6 and parts[2] == "locations" else "global"


def missing_images(detail: Sequence[str]) -> str:
    """Cloud Build's message when `images` names images no step produced (Go's %q of a []string)."""
    return (
        "failed to find one or more images after execution of build steps: ["
        + " ".join(json.dumps(image) for image in detail)
        + "]"
    )


class BuildRunner:
    """Runs builds one per worker thread and reports every status change through notify."""

    def __init__(
        self,
        state_dir: Path,
        store: BuildStore,
        storage: ImageStorage,
        children: ChildGroups,
        notify: Callable[[cloudbuild.Build], None],
        credentials: Callable[[str], str | None] | None = None,
        metadata: Callable[[str], AbstractContextManager[Path | None]] | None = None,
    ) -> None:
        self._store = store
        # The build's service account → its metadata server (a Unix socket) for the build's duration, which steps on
        # the `cloudbuild` network reach at 169.254.169.254 (as on Cloud Build); None: no account to serve.
        self._metadata = metadata or (lambda account: nullcontext(None))
        # The build's service account (Build.service_account) → USER:PASSWORD for its pushes (Cloud Build pushes
        # `images` and docker-push steps as that account); None: no credentials.
        self._credentials = credentials or (lambda account: None)
        self._storage = storage
        self._children = children
        self._notify = notify
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        self.stopping = False
        self._logs = state_dir / "logs"
        self._work = state_dir / "workspaces"
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
                self.finish(build, Outcome(CANCELLED, "Build was cancelled"))
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

    def finish(self, build: cloudbuild.Build, outcome: Outcome) -> None:
        """Write the terminal status onto the build, store it and announce it."""
        build.status = outcome.status
        build.status_detail = outcome.detail
        if outcome.failure_type is not None:
            build.failure_info = cloudbuild.Build.FailureInfo(type_=outcome.failure_type, detail=outcome.detail)
        build.finish_time = now()
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
            build.start_time = now()
            self._store.put(build)
        self._notify(build)
        _log.info("build started", extra={"build_id": build_id, "tags": list(build.tags)})
        timeout = build.timeout if build.timeout.total_seconds() > 0 else DEFAULT_TIMEOUT
        deadline = time.monotonic() + timeout.total_seconds()
        workspace = self._work / build_id
        internal: list[str] = []
        try:
            with (
                self.log_path(build_id).open("a", encoding="utf-8") as log_file,
                self._metadata(build.service_account) as metadata,
            ):
                outcome = self._execute(build, workspace, log_file, deadline, internal, metadata)
                log_file.write(f"FINISHED {outcome.status.name} {outcome.detail}\n")
        except _Cancelled:
            outcome = (
                Outcome(INTERNAL_ERROR, "local Cloud Build stopped while the build ran")
                if self.stopping
                else Outcome(CANCELLED, "Build was cancelled")
            )
        except _TimedOut:
            outcome = Outcome(TIMEOUT, f"Build timed out after {int(timeout.total_seconds())}s")
        except Exception as error:  # a bug here must still end the build (INTERNAL_ERROR), not hang it
            _log.exception("build crashed", extra={"build_id": build_id})
            outcome = Outcome(INTERNAL_ERROR, f"local Cloud Build internal error: {error!r}")
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
            if internal:
                self._children.run(self._storage.rmi(*internal), owner=f"cleanup-{build_id}", timeout=120)
        self.finish(build, outcome)

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
        self,
        build: cloudbuild.Build,
        workspace: Path,
        log_file: IO[str],
        deadline: float,
        internal: list[str],
        metadata: Path | None = None,
    ) -> Outcome:
        if build.options.dynamic_substitutions:
            detail = "options.dynamic_substitutions (bash-style ${VAR/a/b}) is not supported by the local Cloud Build"
            return Outcome(FAILURE, detail, USER_BUILD_STEP)
        fetched = now()
        try:
            creds = self._credentials(build.service_account)  # Cloud Build fetches the source as the build's account
            fetch_source(build, workspace, log_file, token=creds.split(":", 1)[1] if creds else None)
        except SourceError as error:
            return Outcome(FAILURE, str(error), FETCH_SOURCE_FAILED)
        finally:
            build.timing["FETCHSOURCE"] = span(fetched)
        self._store.put(build)
        values = builtin_values(build, build.project_id, location_of(build))
        built: dict[str, str] = {}  # requested image (qualified) -> internal name in storage
        # One entry per step, in step order, b"" when a step wrote no $BUILDER_OUTPUT/output (Results.build_step_outputs).
        build.results.build_step_outputs.extend([b""] * len(build.steps))
        steps_started = now()
        for index, step in enumerate(build.steps):
            self._check(build.id, deadline)
            started = now()
            step.status = WORKING
            step.timing = cloudbuild.TimeSpan(start_time=started)
            self._store.put(build)
            log_file.write(f"Step #{index} ({step.name} {' '.join(step.args)})\n")
            failure = self._run_step(build, index, values, workspace, log_file, deadline, built, internal, metadata)
            step.timing = span(started)
            step.status = FAILURE if failure else SUCCESS
            self._store.put(build)
            if failure is not None:
                return failure
        build.timing["BUILD"] = span(steps_started)
        images = [substitute(requested, values) for requested in build.images]
        absent = [image for image in images if qualified(image) not in built]
        if absent:
            return Outcome(FAILURE, missing_images(absent), PUSH_IMAGE_NOT_FOUND)
        pushed = now()
        for image in images:
            started = now()
            digest, result = self._push(built[qualified(image)], image, build, deadline, log_file)
            if digest is None:
                return Outcome(FAILURE, f"failed to push {image}: {result.tail(3)}", PUSH_FAILED)
            build.results.images.append(cloudbuild.BuiltImage(name=image, digest=digest, push_timing=span(started)))
        if images:
            build.timing["PUSH"] = span(pushed)
        return Outcome(SUCCESS)

    def _run_step(
        self,
        build: cloudbuild.Build,
        index: int,
        values: Mapping[str, str],
        workspace: Path,
        log_file: IO[str],
        deadline: float,
        built: dict[str, str],
        internal: list[str],
        metadata: Path | None = None,
    ) -> Outcome | None:
        step = build.steps[index]
        prefix = f'Build step failure: build step {index} "{step.name}" failed'
        try:
            cwd = (workspace / substitute(step.dir_, values)).resolve()
            if not cwd.is_relative_to(workspace.resolve()) or not cwd.is_dir():
                raise StepError(f"step dir {step.dir_!r} is not a directory in the workspace")
            if builder_name(substitute(step.name, values)) not in DOCKER_BUILDERS:
                return self._run_in_image(build, index, values, workspace, log_file, deadline, built, metadata)
            command = parse_docker_step(
                substitute(step.name, values),
                substitute(step.entrypoint, values),
                [substitute(arg, values) for arg in step.args],
            )
        except StepError as error:
            return Outcome(FAILURE, f"{prefix}: {error}", USER_BUILD_STEP)
        if isinstance(command, DockerBuild):
            context = (cwd / command.context).resolve()
            if not context.is_dir():
                return Outcome(
                    FAILURE, f"{prefix}: unable to prepare context: path {command.context!r} not found", USER_BUILD_STEP
                )
            dockerfile = (cwd / command.dockerfile) if command.dockerfile else None
            names = [
                f"localhost/cd4ml-local-build/{build.id}:step{index}-{n}" for n in range(max(1, len(command.tags)))
            ]
            internal.extend(names)
            result = self._command(
                self._storage.bud(
                    context=context, dockerfile=dockerfile, tags=names, options=command.options, layers=command.cache
                ),
                build.id,
                deadline,
                log_file,
                cwd=cwd,
            )
            if not result.ok:
                return Outcome(
                    FAILURE,
                    f"{prefix}: step exited with non-zero status: {result.returncode}: {_reason(result)}",
                    USER_BUILD_STEP,
                )
            for tag, name in zip(command.tags, names, strict=False):
                built[qualified(tag)] = name
            if command.cache and command.tags:
                self._keep_layers(names[0], command.tags[0])
        elif isinstance(command, DockerTag):
            source = built.get(qualified(command.source))
            if source is None:
                return Outcome(FAILURE, f"{prefix}: No such image: {command.source}", USER_BUILD_STEP)
            built[qualified(command.target)] = source
        elif isinstance(command, DockerPush):
            source = built.get(qualified(command.image))
            if source is None:
                return Outcome(
                    FAILURE, f"{prefix}: An image does not exist locally with the tag: {command.image}", USER_BUILD_STEP
                )
            digest, result = self._push(source, command.image, build, deadline, log_file)
            if digest is None:
                return Outcome(FAILURE, f"{prefix}: push of {command.image} failed: {result.tail(3)}", USER_BUILD_STEP)
        elif isinstance(command, DockerRun):
            try:
                result = run_docker(
                    self._storage,
                    step_image(command.image, built, qualified),
                    command,
                    workspace,
                    lambda argv: self._command(argv, build.id, deadline, log_file),
                    lambda argv: self._children.run(argv, owner=f"cleanup-{build.id}", timeout=60),
                    f"{build.id[:8]}-{index}",
                    metadata,
                )
            except StepError as error:
                return Outcome(FAILURE, f"{prefix}: {error}", USER_BUILD_STEP)
            if not result.ok:
                return Outcome(
                    FAILURE, f"{prefix}: step exited with non-zero status: {result.returncode}", USER_BUILD_STEP
                )
        return None

    def _keep_layers(self, image: str, tag: str) -> None:
        """Hold the layers of ``image`` for the next build of ``tag``'s repository: buildah reuses an unchanged
        instruction's layer only while an image holds it, and the build's own names are removed when it ends (with
        their parents, once dangling). One image per repository holds them; the one it replaces is removed."""
        holder = "localhost/cd4ml-layer-cache/" + _CACHE_NAME.sub("-", tag.rsplit(":", 1)[0].lower()).strip("-")
        ids = {}
        for name in (holder, image):
            found = self._children.run(
                self._storage.buildah("images", "--noheading", "--no-trunc", "--format", "{{.ID}}", name),
                owner="layer-cache",
                timeout=60,
            )
            ids[name] = found.output.strip() if found.ok else ""
        self._children.run(self._storage.tag(image, holder), owner="layer-cache", timeout=60)
        if ids[holder] and ids[holder] != ids[image]:
            self._children.run(self._storage.buildah("rmi", ids[holder]), owner="layer-cache", timeout=120)

    def _run_in_image(
        self,
        build: cloudbuild.Build,
        index: int,
        values: Mapping[str, str],
        workspace: Path,
        log_file: IO[str],
        deadline: float,
        built: Mapping[str, str],
        metadata: Path | None = None,
    ) -> Outcome | None:
        """A step in an image built earlier in the build or a base image; its $BUILDER_OUTPUT/output kept."""
        step = build.steps[index]
        prefix = f'Build step failure: build step {index} "{step.name}" failed'
        name = substitute(step.name, values)
        container = ContainerStep(
            image=step_image(name, built, qualified),
            entrypoint=substitute(step.entrypoint, values),
            args=tuple(substitute(arg, values) for arg in step.args),
            # BuildOptions.env: "A list of global environment variable definitions that will exist for all build
            # steps"; a step's own env after it.
            env=tuple(substitute(env, values) for env in [*build.options.env, *step.env]),
            dir=substitute(step.dir_, values),
        )
        outputs = self._work / f"{build.id}.outputs{index}"
        if unsupported(step):
            return Outcome(FAILURE, f"{prefix}: {unsupported(step)}", USER_BUILD_STEP)
        try:
            result, output = run_step(
                self._storage,
                container,
                workspace,
                outputs,
                lambda argv: self._command(argv, build.id, deadline, log_file),
                lambda argv: self._children.run(argv, owner=f"cleanup-{build.id}", timeout=60),
                f"{build.id[:8]}-{index}",
                metadata,
            )
        except StepError as error:
            return Outcome(FAILURE, f"{prefix}: {str(error).replace(container.image, name)}", USER_BUILD_STEP)
        finally:
            shutil.rmtree(outputs, ignore_errors=True)
        build.results.build_step_outputs[index] = output
        if not result.ok:
            return Outcome(FAILURE, f"{prefix}: step exited with non-zero status: {result.returncode}", USER_BUILD_STEP)
        return None

    def _push(
        self, source: str, image: str, build: cloudbuild.Build, deadline: float, log_file: IO[str]
    ) -> tuple[str | None, CommandResult]:
        """Push an image from storage to its registry as the build's service account; return the manifest digest
        the registry stored."""
        build_id = build.id
        digest_file = self._work / f"{build_id}.{uuid.uuid4().hex}.digest"
        try:
            argv = self._storage.copy(
                self._storage.reference(source),
                f"docker://{image}",
                digest_file=digest_file,
                dest_creds=self._credentials(build.service_account),
            )
            result = self._command(
                argv,
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


def _reason(result: CommandResult) -> str:
    """The one line that says why buildah failed, with a hint when FROM named an image it cannot pull."""
    errors = [line.strip() for line in result.output.splitlines() if line.strip().startswith("Error")]
    reason = errors[-1] if errors else result.tail(3)
    if "image not known" in reason:
        reason += " (the local Cloud Build never pulls: make the base image available with --base-image NAME=SOURCE)"
    return reason
