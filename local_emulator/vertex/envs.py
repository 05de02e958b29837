"""Clean Python environments for python_package trainers, built once and cached by content.

Vertex AI pip-installs the trainer package into its executor image, so a trainer sees exactly what
the image ships plus what its package declares. Locally, two cached virtual environments (``python -m
venv``, no system site-packages) stand in for that:

* the *image layer*, per executor image: its framework pins (``images``), keyed by the pins
  and the interpreter version;
* the *package layer*, per image and package digest (sha256 of every package file, in order): a
  venv whose ``site-packages`` holds a ``.pth`` line pointing at the image layer (so pip sees the
  framework as installed, as it would in the image) and into which the packages and their declared
  dependencies are pip-installed.

Both live under ``CACHE_DIR/vertex-envs/`` (default ``~/.cache/cd4ml``); each is built under an
exclusive ``flock`` and marked complete only at the end, so concurrent jobs (or servers) wait for
one build and a build interrupted half-way is redone. The first build downloads from PyPI and can
take minutes; later jobs reuse it in milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from local_emulator.vertex.images import ExecutorImage

_log = logging.getLogger("local_emulator.vertex")

_COMPLETE = ".complete"
_PIP_TAIL_LINES = 25
# The stack's interpreter settings must not leak into pip (PYTHONPATH would make pip see the
# stack's packages as already installed) nor into the environments.
_DROPPED_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PIP_USER", "VIRTUAL_ENV")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cd4ml`` or ``~/.cache/cd4ml``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cd4ml"


class InstallFailed(Exception):
    """pip (or venv) failed; the message carries the tail of its output."""


@dataclass(frozen=True)
class TrainerEnv:
    """A ready environment: its interpreter and whether this call built it."""

    python: Path
    built: bool
    seconds: float


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def package_digest(packages: Sequence[Path]) -> str:
    """sha256 over the packages' bytes, in order (the name does not count: the content does)."""
    digest = hashlib.sha256()
    for package in packages:
        digest.update(hashlib.sha256(package.read_bytes()).digest())
    return digest.hexdigest()


def trainer_env(
    cache_dir: Path, image: ExecutorImage, packages: Sequence[Path], *, log: Path, environ: Mapping[str, str]
) -> TrainerEnv:
    """The package layer for these packages on this image, built (with its image layer) if absent."""
    started = time.monotonic()
    root = cache_dir / "vertex-envs"
    python_tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    image_key = _digest(python_tag, image.name, *image.requirements)
    image_dir = root / f"image-{image.name}-{image_key}"
    package_dir = root / f"package-{_digest(image_key, package_digest(packages))}"
    pip_env = {k: v for k, v in environ.items() if k not in _DROPPED_VARS and not k.startswith("PIP_TARGET")}
    pip_env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    built = False
    with _locked(image_dir):
        if not (image_dir / _COMPLETE).exists():
            _build(image_dir, ["--only-binary", ":all:", *image.requirements], log, pip_env, what=image.name)
            built = True
    with _locked(package_dir):
        if not (package_dir / _COMPLETE).exists():

            def link_image() -> None:
                (_site_packages(package_dir) / "_vertex_executor_image.pth").write_text(
                    f"{_site_packages(image_dir)}\n", encoding="utf-8"
                )

            _build(package_dir, [str(p) for p in packages], log, pip_env, what="the trainer package", before=link_image)
            built = True
    seconds = time.monotonic() - started
    _log.info(
        "trainer environment ready",
        extra={"env": str(package_dir), "image": image.name, "built": built, "seconds": round(seconds, 2)},
    )
    return TrainerEnv(package_dir / "bin" / "python", built, seconds)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(
    venv: Path,
    pip_args: list[str],
    log: Path,
    env: dict[str, str],
    *,
    what: str,
    before: Callable[[], None] | None = None,
) -> None:
    """Create ``venv`` from scratch and pip-install into it; mark it complete only on success."""
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)], log, env, f"creating a virtual environment for {what}")
    if before is not None:
        before()
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--no-input", *pip_args], log, env, f"pip install of {what}")
    (venv / _COMPLETE).write_text(" ".join(pip_args), encoding="utf-8")


def _run(argv: list[str], log: Path, env: dict[str, str], what: str) -> None:
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-_PIP_TAIL_LINES:]
        raise InstallFailed(f"{what} failed (exit status {result.returncode}); last lines:\n" + "\n".join(lines))
