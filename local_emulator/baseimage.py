"""A small Python base image built from Debian packages, because Docker Hub cannot be reached here.

`FROM python:3.11-slim` in a model's Dockerfile resolves, in the local Cloud Build, to this image:
Debian's python3 with its standard library, dash and coreutils (a shell, so RUN works), made by
mmdebstrap (variant `extract`: no maintainer scripts, ~10 s, ~59 MB) and written as a one-layer OCI
image layout. It is cached under a directory keyed by everything that goes into it.

    python -m local_emulator.baseimage [--cache-dir DIR] [--package P ...]   # prints the layout as JSON
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from local_emulator._build_buildah import ImageStorage, qualified
from local_emulator._service import ChildGroups, configure_logging

#: Debian packages the local delivery stand-ins need on the machine (Cloud Build, registry, base image).
DEBIAN_PACKAGES: tuple[str, ...] = ("buildah", "skopeo", "docker-registry", "mmdebstrap")

#: Bumped whenever the way a base image is made changes, so old cache entries are not reused.
_FORMAT = "cd4ml-baseimage-1"
#: mtimes in the rootfs are clamped to this, so the same inputs give the same layer.
_SOURCE_DATE_EPOCH = "1700000000"
_LAYOUT_REF = "base"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
#: Written into the rootfs: the extract variant runs no maintainer scripts, so nothing else makes them.
_ETC_FILES = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
}

_log = logging.getLogger("baseimage")


def default_cache_dir() -> Path:
    """~/.cache/cd4ml/baseimage, or under $XDG_CACHE_HOME."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "cd4ml" / "baseimage"


def _host_architecture() -> str:
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


class BaseImageError(RuntimeError):
    """The base image could not be made (mmdebstrap failed, no mirror reachable, ...)."""


@dataclass(frozen=True)
class BaseImageSpec:
    """Everything that determines a base image; its hash is the cache key."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    packages: tuple[str, ...] = ("python3", "dash", "coreutils")
    variant: str = "extract"
    architecture: str = field(default_factory=_host_architecture)

    @property
    def key(self) -> str:
        payload = json.dumps({"format": _FORMAT, "etc": _ETC_FILES, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BaseImage:
    """A cached base image: its OCI layout and the containers-image reference to it."""

    spec: BaseImageSpec
    layout: Path
    manifest_digest: str
    built_seconds: float

    @property
    def reference(self) -> str:
        return f"oci:{self.layout}:{_LAYOUT_REF}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes sharing the cache (two servers starting at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _mmdebstrap_argv(spec: BaseImageSpec, target: Path) -> list[str]:
    hooks = [
        f'--setup-hook=mkdir -p "$1/etc" && printf %s {shlex.quote(text)} > "$1/etc/{name}"'
        for name, text in _ETC_FILES.items()
    ]
    return [
        "mmdebstrap",
        f"--variant={spec.variant}",
        f"--architectures={spec.architecture}",
        f"--include={','.join(spec.packages)}",
        "--mode=root",
        "--format=tar",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        *hooks,
        spec.suite,
        str(target),
        spec.mirror,
    ]


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return digest


def write_oci_layout(rootfs_tar: Path, layout: Path, spec: BaseImageSpec) -> str:
    """Write a one-layer OCI image layout (uncompressed layer) from a rootfs tarball; return the manifest digest."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    hasher = hashlib.sha256()
    staging = blobs / "layer.partial"
    with rootfs_tar.open("rb") as src, staging.open("wb") as dst:
        while chunk := src.read(1 << 20):
            hasher.update(chunk)
            dst.write(chunk)
    layer_digest = hasher.hexdigest()
    staging.rename(blobs / layer_digest)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(_SOURCE_DATE_EPOCH)))
    config: dict[str, Any] = {
        "created": created,
        "architecture": spec.architecture,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
            "Labels": {"org.opencontainers.image.description": f"cd4ml local base: Debian {spec.suite}"},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created": created, "created_by": "mmdebstrap " + " ".join(spec.packages)}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = _write_blob(blobs, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{config_digest}",
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": f"sha256:{layer_digest}",
                "size": (blobs / layer_digest).stat().st_size,
            }
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = _write_blob(blobs, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}",
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": _LAYOUT_REF},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True), encoding="utf-8")
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}), encoding="utf-8")
    return f"sha256:{manifest_digest}"


def ensure_base_image(spec: BaseImageSpec, cache_dir: Path) -> BaseImage:
    """Return the cached base image for spec, building it first if absent (~10 s; then ~0 s)."""
    entry = cache_dir / spec.key
    with _locked(cache_dir / f"{spec.key}.lock"):
        done = entry / "image.json"
        if done.exists():
            record = json.loads(done.read_text(encoding="utf-8"))
            return BaseImage(spec, entry / "oci", record["manifest_digest"], 0.0)
        if entry.exists():
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        started = time.monotonic()
        rootfs = entry / "rootfs.tar"
        env = {**os.environ, "SOURCE_DATE_EPOCH": _SOURCE_DATE_EPOCH}
        argv = _mmdebstrap_argv(spec, rootfs)
        _log.info("building base image", extra={"spec": asdict(spec), "argv": argv})
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            shutil.rmtree(entry, ignore_errors=True)
            tail = " | ".join(result.stderr.strip().splitlines()[-5:])
            raise BaseImageError(f"mmdebstrap failed ({result.returncode}): {tail}")
        digest = write_oci_layout(rootfs, entry / "oci", spec)
        rootfs.unlink()
        seconds = time.monotonic() - started
        done.write_text(
            json.dumps({"manifest_digest": digest, "spec": asdict(spec), "seconds": seconds}), encoding="utf-8"
        )
        _log.info("built base image", extra={"key": spec.key, "seconds": round(seconds, 2), "digest": digest})
        return BaseImage(spec, entry / "oci", digest, seconds)


def _aliases(name: str) -> tuple[str, ...]:
    """docker.io/library/python:3.11-slim and localhost/python:3.11-slim for `python:3.11-slim`."""
    full = qualified(name)
    if full.startswith("docker.io/"):
        short = full.removeprefix("docker.io/").removeprefix("library/")
        return (full, f"localhost/{short}")
    return (full,)


def import_image(source: str, names: Sequence[str], storage: ImageStorage, children: ChildGroups) -> None:
    """Copy an image (any containers-image reference) into storage under each name, short and qualified.

    Both `localhost/NAME` and `docker.io/library/NAME` are recorded, so that `FROM NAME` resolves locally
    whatever the machine's registries.conf says about short names.
    """
    if not names:
        return
    aliases: list[str] = []
    for name in names:
        for alias in _aliases(name):
            if alias not in aliases:
                aliases.append(alias)
    result = children.run(storage.copy(source, storage.reference(aliases[0])), owner="baseimage", timeout=300)
    if not result.ok:
        raise BaseImageError(f"cannot import {source}: {result.tail()}")
    if len(aliases) > 1:
        tagged = children.run(storage.tag(aliases[0], *aliases[1:]), owner="baseimage", timeout=60)
        if not tagged.ok:
            raise BaseImageError(f"cannot tag {aliases[0]}: {tagged.tail()}")


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or find in the cache) the base image and print where it is."""
    parser = argparse.ArgumentParser(prog="python -m local_emulator.baseimage", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(), help="cache root (default %(default)s)")
    parser.add_argument("--suite", default=BaseImageSpec.suite)
    parser.add_argument("--mirror", default=BaseImageSpec.mirror)
    parser.add_argument("--package", action="append", dest="packages", help="Debian package to include (repeat)")
    args = parser.parse_args(argv)
    configure_logging("baseimage")
    spec = BaseImageSpec(
        suite=args.suite,
        mirror=args.mirror,
        packages=tuple(args.packages) if args.packages else BaseImageSpec.packages,
    )
    try:
        image = ensure_base_image(spec, args.cache_dir)
    except BaseImageError as error:
        _log.error("base image failed", extra={"error": str(error)})
        return 1
    json.dump(
        {"layout": str(image.layout), "reference": image.reference, "digest": image.manifest_digest, "key": spec.key},
        sys.stdout,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
