"""Build steps that run in an image, as Cloud Build runs any step: an image built earlier in the build, or a base image.

Cloud Build runs each step as a container of the image its ``name`` names, pulled unless "available in the
host's Docker daemon's cache ... If you built an image in a previous build step, it will be stored in the
host's Docker daemon's cache and is available to use as the name for a later build step" (BuildStep.name,
cloudbuild.proto). The step's ``entrypoint`` replaces the image's; without one, ``args`` are the arguments of
the image's entrypoint, or, when the image has none, ``args[0]`` is the command (BuildStep.args). The
container's working directory is ``/workspace`` joined with ``dir`` (BuildStep.dir); its environment the
image's Env, then the step's ``env``, then ``BUILDER_OUTPUT``: what the step writes to
``$BUILDER_OUTPUT/output`` comes back in ``results.buildStepOutputs[i]``, "Only the first 50KB of data is
stored" (Results.build_step_outputs).

Locally: ``buildah from --pull-never`` of the image in the build's storage, ``buildah run --isolation chroot``
(crun isolation fails on this kind of machine) inside a network namespace of its own (``cloudbuild.network``: the
step's own localhost, as a container has, and on Cloud Build's ``cloudbuild`` network the build account's metadata
server at 169.254.169.254 / ``metadata.google.internal``), the workspace and an outputs folder bind-mounted; the
working container is removed afterwards. A docker step's ``docker run`` (``run_docker``) runs the same way with only
what its flags give: its ``-v`` binds of the workspace, its ``-e``, ``-w``, ``--entrypoint``, and its network
(``--network=none``: loopback only, no metadata server). The local Cloud Build never pulls, so any other image fails
the step with a message saying what it can run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild

from local_emulator.cloudbuild.network import CLOUDBUILD, NONE, hosts, isolated
from local_emulator.cloudbuild.steps import DockerRun, StepError
from local_emulator.common.service import CommandResult
from local_emulator.containers import ImageConfig
from local_emulator.containers.buildah import ImageStorage

WORKSPACE = "/workspace"
#: Where BUILDER_OUTPUT points inside a step, as on Cloud Build's workers.
BUILDER_OUTPUT = "/builder/outputs"
#: Results.build_step_outputs: "Only the first 50KB of data is stored."
MAX_OUTPUT = 50 * 1024

Run = Callable[[Sequence[str]], CommandResult]


@dataclass(frozen=True)
class ContainerStep:
    """One step, substituted: the image (as named in the build's storage) and how to run it."""

    image: str
    entrypoint: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    dir: str


def command(config: ImageConfig, entrypoint: str, args: Sequence[str]) -> list[str]:
    """What the step runs (BuildStep.entrypoint and BuildStep.args): the image's Cmd never applies."""
    if entrypoint:
        return [entrypoint, *args]
    argv = [*config.entrypoint, *args]
    if not argv:
        raise StepError("the step has no entrypoint and no args, and its image has no Entrypoint")
    return argv


def environment(config: ImageConfig, step_env: Sequence[str]) -> dict[str, str]:
    """The image's Env, the step's env on top (KEY=VALUE, validated before), then BUILDER_OUTPUT (read-only)."""
    merged = config.environment(dict(entry.split("=", 1) for entry in step_env))
    merged["BUILDER_OUTPUT"] = BUILDER_OUTPUT
    return merged


def unsupported(step: cloudbuild.BuildStep) -> str:
    """What the local Cloud Build does not run in a step ("" when nothing): it fails the step rather than ignore it."""
    fields = [f for f in ("volumes", "secret_env", "script", "allow_failure", "allow_exit_codes") if f in step]
    return f"{', '.join(fields)} of a step are not supported by the local Cloud Build" if fields else ""


def unknown_image(name: str) -> str:
    """The failure of a step whose image the local Cloud Build does not have (it never pulls)."""
    return (
        f"step image {name!r} is not supported by the local Cloud Build: it runs gcr.io/cloud-builders/docker "
        "steps, images built earlier in this build, and its base images (--base-image); it never pulls"
    )


@dataclass(frozen=True)
class Launch:
    """How one container runs: what, with which environment, mounts (host, container, read-only), and where."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    mounts: tuple[tuple[Path, str, bool], ...]
    workdir: str


def run_container(
    storage: ImageStorage,
    image: str,
    network: str,
    plan: Callable[[ImageConfig], Launch],
    run: Run,
    cleanup: Run,
    label: str,
    metadata: Path | None = None,
) -> CommandResult:
    """Run one container of ``image`` (in the build's storage) on ``network`` to its end, as ``plan`` lays it out from
    the image's config; StepError when the image is not there or gives nothing to run. ``metadata``: the Unix socket
    of the build account's metadata server, which the ``cloudbuild`` network serves at 169.254.169.254."""
    name = f"cd4ml-step-{label}-{uuid.uuid4().hex[:8]}"
    created = run(storage.buildah("from", "--name", name, "--pull-never", "--quiet", *hosts(network, metadata), image))
    if not created.ok:
        raise StepError(f"{unknown_image(image)} ({created.tail(1)})")
    try:
        inspected = run(storage.buildah("inspect", "--type", "container", name))
        if not inspected.ok:
            raise StepError(f"cannot read the config of {image}: {inspected.tail(1)}")
        config = ImageConfig.from_oci(json.loads(inspected.output)["OCIv1"].get("config") or {})
        launch = plan(config)
        options = ["run", "--isolation", "chroot", "--network", "host"]
        if launch.workdir:
            options += ["--workingdir", launch.workdir]
        for host, inside, read_only in launch.mounts:
            options += ["--volume", f"{host}:{inside}" + (":ro" if read_only else "")]
        for key, value in launch.env:
            options += ["--env", f"{key}={value}"]
        if config.user:
            options += ["--user", config.user]
        return run(isolated(storage.buildah(*options, name, "--", *launch.argv), network, metadata))
    finally:
        cleanup(storage.buildah("rm", name))


@dataclass(frozen=True)
class _StepPlan:
    """A Cloud Build step: the workspace and $BUILDER_OUTPUT mounted, on the ``cloudbuild`` network."""

    step: ContainerStep
    workspace: Path
    outputs: Path

    def __call__(self, config: ImageConfig) -> Launch:
        workdir = f"{WORKSPACE}/{self.step.dir}".rstrip("/") if self.step.dir else WORKSPACE
        return Launch(
            tuple(command(config, self.step.entrypoint, self.step.args)),
            tuple(environment(config, self.step.env).items()),
            ((self.workspace, WORKSPACE, False), (self.outputs, BUILDER_OUTPUT, False)),
            workdir,
        )


def run_step(
    storage: ImageStorage,
    step: ContainerStep,
    workspace: Path,
    outputs: Path,
    run: Run,
    cleanup: Run,
    label: str,
    metadata: Path | None = None,
) -> tuple[CommandResult, bytes]:
    """Run the step to its end; (its result, the first 50 KB of its ``$BUILDER_OUTPUT/output``, b"" if none).

    StepError when the image is not in storage or gives nothing to run. ``run`` runs one argv (with the
    build's deadline, cancellation and log); ``cleanup`` removes the working container even then; ``label`` names it.
    The step is on the ``cloudbuild`` network: ``metadata`` (the build account's metadata server) answers it.
    """
    outputs.mkdir(parents=True, exist_ok=True)
    plan = _StepPlan(step, workspace, outputs)
    result = run_container(storage, step.image, CLOUDBUILD, plan, run, cleanup, label, metadata)
    output = outputs / "output"
    data = output.read_bytes()[:MAX_OUTPUT] if output.is_file() else b""
    return result, data


@dataclass(frozen=True)
class _RunPlan:
    """A container a docker step starts (``docker run``): only what its flags give it."""

    command: DockerRun
    mounts: tuple[tuple[Path, str, bool], ...]

    def __call__(self, config: ImageConfig) -> Launch:
        # `docker run IMAGE ARGS`: ARGS replace the image's Cmd; --entrypoint replaces its Entrypoint and clears Cmd.
        if self.command.entrypoint is not None:
            argv = [self.command.entrypoint, *self.command.args] if self.command.entrypoint else list(self.command.args)
        else:
            argv = [*config.entrypoint, *(self.command.args or config.cmd)]
        if not argv:
            raise StepError("docker: Error response from daemon: no command specified")
        env = config.environment(dict(entry.split("=", 1) for entry in self.command.env))
        return Launch(tuple(argv), tuple(env.items()), self.mounts, self.command.workdir)


def run_docker(
    storage: ImageStorage,
    image: str,
    command: DockerRun,
    workspace: Path,
    run: Run,
    cleanup: Run,
    label: str,
    metadata: Path | None = None,
) -> CommandResult:
    """``docker run`` from a docker step, to its end. The docker builder talks to the worker's Docker daemon, whose
    ``/workspace`` is the build's workspace (a bind of ``/workspace`` sees the step's files: cloud-builders#323);
    other host paths are the worker's own, which the local Cloud Build does not have (refused). A missing host
    directory is created, as ``docker run -v`` does."""
    mounts: list[tuple[Path, str, bool]] = []
    for mount in command.mounts:
        if mount.host != WORKSPACE and not mount.host.startswith(WORKSPACE + "/"):
            raise StepError(
                f"docker run -v {mount.host}:… is not supported by the local Cloud Build: only {WORKSPACE} and "
                "folders in it are the worker's paths here"
            )
        host = (workspace / mount.host[len(WORKSPACE) :].lstrip("/")).resolve()
        if not host.is_relative_to(workspace.resolve()):
            raise StepError(f"docker run -v {mount.host}: leaves {WORKSPACE}")
        host.mkdir(parents=True, exist_ok=True)
        mounts.append((host, mount.container, mount.read_only))
    plan = _RunPlan(command, tuple(mounts))
    return run_container(storage, image, command.network, plan, run, cleanup, label, metadata)


def _own_loopback(argv: list[str]) -> list[str]:
    """argv in a network namespace of its own with only loopback up (Docker's ``none`` network): as each Cloud Build
    step has its own container network stack, two steps (of concurrent builds) can both listen on 8080, and no host
    service answers in their place."""
    return isolated(argv, NONE, None)


def step_image(name: str, built: Mapping[str, str], qualified: Callable[[str], str]) -> str:
    """The image a step runs in: the one an earlier step built under that name, else the name itself (a base image)."""
    return built.get(qualified(name), name)
