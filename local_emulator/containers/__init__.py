"""Run an image from the local registry as a process: buildah, chroot isolation, host network, no daemon.

What the local stack uses where production runs a container (the serving image in a smoke test, a Vertex
container_spec job): the image is pulled from the local Distribution registry over plain HTTP, a working
container is made from it, and its command runs with ``buildah run --isolation chroot`` (crun isolation
fails on this machine) in a process group of its own, so that ``stop`` ends all of it.

As `docker run IMAGE [ARGV]` would: with no argv the image's Entrypoint followed by its Cmd runs; the
environment is the image's Env with ``env`` on top; the image's WorkingDir and User apply. Unlike a
container runtime there are no namespaces: the process sees the host's network (ports bind on the host),
pids and, apart from the chroot, its filesystem limits.

    container = containers.start("127.0.0.1:5000/digits@sha256:…", None, {"PORT": "8081"},
                                 state_dir=state, log=state / "serve.log")
    ...
    container.stop()
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from local_emulator.common import processes
from local_emulator.common.service import ChildGroups
from local_emulator.containers.buildah import ImageStorage

_log = logging.getLogger("local_emulator.containers")

#: Tried in order; the first whose `buildah from` works is kept for the state directory. overlay mounts
#: in ~0.1 s; vfs copies the image's layers (seconds for a few hundred MB) but works without overlay mounts.
DRIVERS: tuple[str, ...] = ("overlay", "vfs")
_PULL_TIMEOUT_S = 300.0
_drivers: dict[Path, str] = {}
_drivers_lock = threading.Lock()


class ContainerError(RuntimeError):
    """The image could not be pulled or prepared, or its config gives nothing to run."""


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config (`config` object) that decide how the container runs."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""

    @classmethod
    def from_oci(cls, config: Mapping[str, Any]) -> ImageConfig:
        """From the image-spec's config object (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`; any may be null)."""
        return cls(
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=tuple(config.get("Env") or ()),
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )

    def command(self, argv: Sequence[str] | None, args: Sequence[str] | None = None) -> list[str]:
        """argv itself when given; else Entrypoint + args when args are given (`docker run IMAGE ARGS`: they replace
        Cmd); else Entrypoint + Cmd, as `docker run IMAGE` with no arguments runs."""
        after = self.cmd if args is None else tuple(args)
        command = list(argv) if argv is not None else [*self.entrypoint, *after]
        if not command:
            raise ContainerError("the image has neither Entrypoint nor Cmd and no argv was given")
        return command

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The image's Env, then env on top (a later value of a name wins, as in `docker run -e`)."""
        merged: dict[str, str] = {}
        for entry in self.env:
            name, _, value = entry.partition("=")
            merged[name] = value
        merged.update(env)
        return merged


@dataclass
class Container:
    """A running (or finished) container: its buildah run process group and its working container."""

    name: str
    storage: ImageStorage
    proc: subprocess.Popen[bytes]
    log: Path
    _children: ChildGroups = field(default_factory=ChildGroups, repr=False)
    _stopped_code: int | None = field(default=None, repr=False)
    _removed: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """The pid of `buildah run`, leader of the container's process group."""
        return self.proc.pid

    def wait(self, timeout: float | None) -> int:
        """The exit code of the container's command (negative: killed by that signal); TimeoutError if still running."""
        if self._stopped_code is not None:
            return self._stopped_code
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"container {self.name} still running after {timeout} s") from None

    def stop(self) -> None:
        """Stop the process group (TERM, then KILL), then remove the working container; safe to call twice."""
        if self._stopped_code is None:
            code = self.proc.poll()
            processes.stop(self.proc.pid)
            # processes.stop reaps the leader itself, so Popen can no longer learn how it ended.
            self._stopped_code = code if code is not None else -int(signal.SIGTERM)
        if not self._removed:
            removed = self._children.run(self.storage.buildah("rm", self.name), owner="containers", timeout=60)
            if not removed.ok:
                _log.warning("working container not removed", extra={"container": self.name, "error": removed.tail()})
            self._removed = True


def _pull_and_create(
    reference: str, name: str, state_dir: Path, children: ChildGroups, creds: str | None = None
) -> ImageStorage:
    """`buildah from` the reference (pulling it over plain HTTP if absent, with ``creds`` USER:PASSWORD for a
    registry that asks for a token) with the first driver that works."""
    with _drivers_lock:
        known = _drivers.get(state_dir)
    failures: list[str] = []
    for driver in (known,) if known else DRIVERS:
        storage = ImageStorage.under(state_dir, driver)
        argv = storage.buildah(
            "from",
            "--name",
            name,
            "--pull=true",
            "--tls-verify=false",
            "--signature-policy",
            str(storage.policy),
            "--quiet",
            *(["--creds", creds] if creds else []),
            f"docker://{reference}",
        )
        created = children.run(argv, owner="containers", timeout=_PULL_TIMEOUT_S)
        if created.ok:
            with _drivers_lock:
                _drivers[state_dir] = driver
            return storage
        failures.append(f"{driver}: {created.tail(3)}")
        children.run(storage.buildah("rm", name), owner="containers", timeout=60)  # a half-made container
    raise ContainerError(f"cannot make a container from {reference}: " + "; ".join(failures))


def _config(storage: ImageStorage, name: str, children: ChildGroups) -> ImageConfig:
    inspected = children.run(storage.buildah("inspect", "--type", "container", name), owner="containers", timeout=60)
    if not inspected.ok:
        raise ContainerError(f"cannot read the config of {name}: {inspected.tail()}")
    # buildah 1.28's --format has no `json` function: read the whole document, OCIv1 is the image-spec config.
    return ImageConfig.from_oci(json.loads(inspected.output)["OCIv1"].get("config") or {})


def start(
    reference: str,
    argv: Sequence[str] | None,
    env: Mapping[str, str],
    *,
    state_dir: Path,
    log: Path,
    creds: str | None = None,
    args: Sequence[str] | None = None,
) -> Container:
    """Pull reference from the local registry and run it (argv, or the image's Entrypoint + ``args`` or Cmd) in the
    background.

    ``creds`` (``oauth2accesstoken:TOKEN``) answers the registry's token challenge when it has token auth.
    The container's stdout and stderr are appended to log. Images are kept in storage under
    ``state_dir/containers`` for the next start; the working container is removed by ``stop``.
    """
    children = ChildGroups()
    name = f"cd4ml-run-{uuid.uuid4().hex[:12]}"
    storage = _pull_and_create(reference, name, state_dir, children, creds)
    try:
        config = _config(storage, name, children)
        command = config.command(argv, args)
        run = ["run", "--isolation", "chroot", "--network", "host"]
        for key, value in config.environment(env).items():
            run += ["--env", f"{key}={value}"]
        if config.working_dir:
            run += ["--workingdir", config.working_dir]
        if config.user:
            run += ["--user", config.user]
        run_argv = storage.buildah(*run, name, "--", *command)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                run_argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
    except BaseException:
        children.run(storage.buildah("rm", name), owner="containers", timeout=60)
        raise
    _log.info(
        "container started",
        extra={
            "container": name,
            "reference": reference,
            "pid": proc.pid,
            "command": command,
            "driver": storage.driver,
        },
    )
    return Container(name=name, storage=storage, proc=proc, log=log, _children=children)
