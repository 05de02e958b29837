"""A small Python base image built from Debian packages, because Docker Hub cannot be reached here.

`FROM python:3.11-slim` in a model's Dockerfile resolves, in the local Cloud Build, to this image:
Debian bookworm's python3 (3.11, as in python:3.11-slim) with its standard library, dash and coreutils
(a shell, so RUN works), made by mmdebstrap (variant `extract`: no maintainer scripts) and written as a
one-layer OCI image layout. It is cached under a directory keyed by everything that goes into it.

What a Dockerfile written for python:3.11-slim relies on, and this image therefore provides (the
official image's Dockerfile, docker-library/python `3.11/slim-bookworm/Dockerfile`, builds Python into
/usr/local, installs pip, and ships no PEP 668 marker):
- `python`, `python3` and `pip` on PATH (python-is-python3, python3-pip);
- `pip install` into the system interpreter: Debian's `EXTERNALLY-MANAGED` marker is removed;
- the shared libraries manylinux wheels link against (libstdc++6: scipy's extensions need it);
- the CA bundle pip uses to reach PyPI (`/etc/ssl/certs/ca-certificates.crt`, which ca-certificates'
  maintainer script would have made).

    python -m local_emulator.containers.baseimage [--cache-dir DIR] [--package P ...]   # prints the layout as JSON
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

from local_emulator.common.service import ChildGroups, configure_logging
from local_emulator.containers.buildah import ImageStorage, qualified

#: Debian packages the local delivery stand-ins need on the machine (Cloud Build, registry, base image).
DEBIAN_PACKAGES: tuple[str, ...] = ("buildah", "skopeo", "docker-registry", "mmdebstrap")

#: Bumped whenever the way a base image is made changes, so old cache entries are not reused.
_FORMAT = "cd4ml-baseimage-2"
#: mtimes in the rootfs are clamped to this, so the same inputs give the same layer.
_SOURCE_DATE_EPOCH = "1700000000"
_LAYOUT_REF = "base"
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
#: Written into the rootfs: the extract variant runs no maintainer scripts, so nothing else makes them.
_ETC_FILES = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    "group": "root:x:0:\nnogroup:x:65534:\n",
}
#: Run on the unpacked rootfs ("$1"), in order: what makes the Debian tree behave like python:3.11-slim.
#: "$ANCHORS" is the file of this machine's local trust anchors, staged beside the rootfs (see BaseImageSpec).
_CUSTOMIZE_HOOKS: tuple[str, ...] = (
    # python:3.11-slim has no PEP 668 marker, so `pip install` there writes into the system interpreter;
    # Debian's python3.11 ships /usr/lib/python3.11/EXTERNALLY-MANAGED, which would refuse it.
    'rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',
    # update-ca-certificates (ca-certificates' postinst) does not run in the extract variant; Debian's pip
    # reads this bundle, so without it every PyPI download fails certificate verification. Like
    # update-ca-certificates(8), it is Mozilla's set plus the machine's local anchors.
    'mkdir -p "$1/etc/ssl/certs" && cat "$1"/usr/share/ca-certificates/mozilla/*.crt "$ANCHORS" '
    '> "$1/etc/ssl/certs/ca-certificates.crt"',
)
#: Where Debian keeps a machine's own trust anchors (update-ca-certificates(8)).
LOCAL_ANCHORS = Path("/usr/local/share/ca-certificates")

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
    packages: tuple[str, ...] = (
        "python3",
        "python-is-python3",
        "python3-pip",
        "ca-certificates",
        "dash",
        "coreutils",
        # in debian:bookworm-slim (apt links libstdc++) or added by python:3.11-slim's Dockerfile (netbase,
        # tzdata); manylinux wheels expect libstdc++ (PEP 599): scipy's extensions fail to import without it
        "libstdc++6",
        "netbase",
        "tzdata",
    )
    variant: str = "extract"
    architecture: str = field(default_factory=_host_architecture)
    local_anchors: str = str(LOCAL_ANCHORS)
    """The host's extra CA certificates (`*.crt`), trusted in the image too: a machine behind a TLS-inspecting
    proxy reaches PyPI only with them, as its own pip does. "" trusts Mozilla's set alone, as python:3.11-slim."""

    def anchors(self) -> bytes:
        """The local anchors as one PEM text (part of the cache key: a rotated proxy CA rebuilds the base)."""
        if not self.local_anchors:
            return b""
        found = sorted(Path(self.local_anchors).rglob("*.crt")) if Path(self.local_anchors).is_dir() else []
        return b"".join(path.read_bytes().rstrip(b"\n") + b"\n" for path in found)

    @property
    def key(self) -> str:
        payload = json.dumps(
            {
                "format": _FORMAT,
                "etc": _ETC_FILES,
                "customize": _CUSTOMIZE_HOOKS,
                "anchors": hashlib.sha256(self.anchors()).hexdigest(),
                **asdict(self),
            },
            sort_keys=True,
        )
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


def _mmdebstrap_argv(spec: BaseImageSpec, target: Path, anchors: Path) -> list[str]:
    # mmdebstrap runs no customize hook in the extract variant (measured); its extract hook comes after
    # the --include packages are unpacked there. Other variants install later, so they customize.
    stage = "extract" if spec.variant == "extract" else "customize"
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
        *(f"--{stage}-hook=ANCHORS={shlex.quote(str(anchors))}; {hook}" for hook in _CUSTOMIZE_HOOKS),
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
    """Return the cached base image for spec, building it first if absent (~15 s; then ~0 s)."""
    key = spec.key
    entry = cache_dir / key
    with _locked(cache_dir / f"{key}.lock"):
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
        anchors = entry / "local-anchors.pem"
        anchors.write_bytes(spec.anchors())
        argv = _mmdebstrap_argv(spec, rootfs, anchors)
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
        _log.info("built base image", extra={"key": key, "seconds": round(seconds, 2), "digest": digest})
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
    parser = argparse.ArgumentParser(
        prog="python -m local_emulator.containers.baseimage", description=__doc__.splitlines()[0]
    )
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
