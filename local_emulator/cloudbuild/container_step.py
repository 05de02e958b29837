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
(crun isolation fails on this kind of machine) inside ``unshare --net`` (a network namespace with loopback only: the
step's own localhost, as a container has), the workspace and an outputs folder bind-mounted; the working
container is removed afterwards. The local Cloud Build never pulls, so any other image fails the
step with a message saying what it can run.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild

from local_emulator.cloudbuild.steps import StepError
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


def run_step(
    storage: ImageStorage, step: ContainerStep, workspace: Path, outputs: Path, run: Run, cleanup: Run, label: str
) -> tuple[CommandResult, bytes]:
    """Run the step to its end; (its result, the first 50 KB of its ``$BUILDER_OUTPUT/output``, b"" if none).

    StepError when the image is not in storage or gives nothing to run. ``run`` runs one argv (with the
    build's deadline, cancellation and log); ``cleanup`` removes the working container even then; ``label`` names it.
    """
    name = f"cd4ml-step-{label}-{uuid.uuid4().hex[:8]}"
    created = run(storage.buildah("from", "--name", name, "--pull-never", "--quiet", step.image))
    if not created.ok:
        raise StepError(f"{unknown_image(step.image)} ({created.tail(1)})")
    try:
        inspected = run(storage.buildah("inspect", "--type", "container", name))
        if not inspected.ok:
            raise StepError(f"cannot read the config of {step.image}: {inspected.tail(1)}")
        config = ImageConfig.from_oci(json.loads(inspected.output)["OCIv1"].get("config") or {})
        argv = command(config, step.entrypoint, step.args)
        outputs.mkdir(parents=True, exist_ok=True)
        workdir = f"{WORKSPACE}/{step.dir}".rstrip("/") if step.dir else WORKSPACE
        options = [
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--workingdir",
            workdir,
            "--volume",
            f"{workspace}:{WORKSPACE}",
            "--volume",
            f"{outputs}:{BUILDER_OUTPUT}",
        ]
        for key, value in environment(config, step.env).items():
            options += ["--env", f"{key}={value}"]
        if config.user:
            options += ["--user", config.user]
        result = run(_own_loopback(storage.buildah(*options, name, "--", *argv)))
        output = outputs / "output"
        data = output.read_bytes()[:MAX_OUTPUT] if output.is_file() else b""
        return result, data
    finally:
        cleanup(storage.buildah("rm", name))


def _own_loopback(argv: list[str]) -> list[str]:
    """argv in a network namespace of its own with only loopback up: as each Cloud Build step has its own
    container network stack, two steps (of concurrent builds) can both listen on 8080, and no host service
    answers in their place. Unlike Cloud Build's `cloudbuild` network, it has no route out."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    return ["unshare", "--net", "--", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh", *argv]


def step_image(name: str, built: Mapping[str, str], qualified: Callable[[str], str]) -> str:
    """The image a step runs in: the one an earlier step built under that name, else the name itself (a base image)."""
    return built.get(qualified(name), name)
