"""Daemonless image commands: buildah (build, tag, rmi) and skopeo (copy) on one private vfs storage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_ACCEPT_ANYTHING = {"default": [{"type": "insecureAcceptAnything"}]}


@dataclass(frozen=True)
class ImageStorage:
    """A containers-storage tree private to one server: overlay where it works, else vfs (no mounts needed)."""

    root: Path
    runroot: Path
    policy: Path
    driver: str = "vfs"

    @classmethod
    def under(cls, state_dir: Path, driver: str = "vfs") -> ImageStorage:
        """Create (if needed) a storage tree for driver and a signature policy below state_dir."""
        base = state_dir / "containers"
        root = base / driver
        storage = cls(root=root / "storage", runroot=root / "run", policy=base / "policy.json", driver=driver)
        storage.root.mkdir(parents=True, exist_ok=True)
        base.mkdir(parents=True, exist_ok=True)
        storage.runroot.mkdir(parents=True, exist_ok=True)
        if not storage.policy.exists():
            storage.policy.write_text(json.dumps(_ACCEPT_ANYTHING), encoding="utf-8")
        return storage

    def buildah(self, *args: str) -> list[str]:
        """argv for buildah with this storage."""
        return [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
            *args,
        ]

    def reference(self, image: str) -> str:
        """A containers-image reference to image inside this storage (what skopeo reads and writes)."""
        return f"containers-storage:[{self.driver}@{self.root}+{self.runroot}]{image}"

    def bud(
        self,
        *,
        context: Path,
        dockerfile: Path | None,
        tags: Sequence[str],
        options: Sequence[str],
        layers: bool = False,
    ) -> list[str]:
        """argv for `buildah bud` that never pulls: FROM must name an image already in this storage; ``layers``
        keeps each instruction's layer and reuses it when a later build repeats the instruction on the same inputs."""
        argv = self.buildah(
            "bud",
            "--isolation",
            "chroot",
            "--pull-never",
            "--signature-policy",
            str(self.policy),
            f"--layers={'true' if layers else 'false'}",
        )
        if dockerfile is not None:
            argv += ["--file", str(dockerfile)]
        for tag in tags:
            argv += ["--tag", tag]
        return [*argv, *options, str(context)]

    def copy(
        self, source: str, destination: str, *, digest_file: Path | None = None, dest_creds: str | None = None
    ) -> list[str]:
        """argv for `skopeo copy` between any two references; registries are plain HTTP locally; ``dest_creds``
        (USER:PASSWORD) answers the destination registry's token challenge."""
        argv = [
            "skopeo",
            "--policy",
            str(self.policy),
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--quiet",
        ]
        if digest_file is not None:
            argv += ["--digestfile", str(digest_file)]
        if dest_creds is not None:
            argv += ["--dest-creds", dest_creds]
        return [*argv, source, destination]

    def tag(self, image: str, *names: str) -> list[str]:
        return self.buildah("tag", image, *names)

    def rmi(self, *images: str) -> list[str]:
        return self.buildah("rmi", "--force", *images)


def qualified(image: str) -> str:
    """The fully qualified form of a short image name, as containers-storage records it."""
    first, _, rest = image.partition("/")
    if not rest:
        image = f"docker.io/library/{image}"
    elif "." not in first and ":" not in first and first != "localhost":
        image = f"docker.io/{image}"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        image += ":latest"
    return image
