"""Running an image from the local registry (local_emulator.containers) as `docker run` would.

The unmarked tests cover how the image config becomes a command and an environment (Docker's rules:
https://docs.docker.com/reference/dockerfile/#understand-how-cmd-and-entrypoint-interact, and
`docker run -e` overriding the image's ENV). Tests marked `emulator` push a tiny image (dash, sleep and
libc from this machine, its config set with `buildah config`) to a real Distribution registry and run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from local_emulator import containers
from local_emulator.common import processes
from local_emulator.containers import ContainerError, ImageConfig
from local_emulator.containers.buildah import ImageStorage
from local_emulator.registry import registry_config

#: Host files that make a working shell image: dash as /bin/sh, sleep, and what they link against.
_TINY_FILES = ("/usr/bin/dash", "/usr/bin/sleep", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")


def test_no_argv_runs_entrypoint_then_cmd_and_argv_replaces_both() -> None:
    config = ImageConfig.from_oci({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": None})
    assert config.command(None) == ["/bin/sh", "-c", "echo hi"]
    assert config.command(["/bin/true"]) == ["/bin/true"]
    assert ImageConfig.from_oci({"Entrypoint": None, "Cmd": ["python3", "/opt/serve.py"]}).command(None) == [
        "python3",
        "/opt/serve.py",
    ]


def test_args_alone_replace_cmd_and_keep_the_entrypoint() -> None:
    """Vertex AI's container_spec: command replaces the ENTRYPOINT, args alone the CMD
    (https://cloud.google.com/vertex-ai/docs/training/configure-container-settings), as `docker run IMAGE ARGS`."""
    config = ImageConfig.from_oci({"Entrypoint": ["python3", "-m", "trainer.task"], "Cmd": ["--help"]})
    assert config.command(None, ["--seed=7", "--alpha=0.1"]) == [
        "python3",
        "-m",
        "trainer.task",
        "--seed=7",
        "--alpha=0.1",
    ]
    assert config.command(["python3", "-V"], ["ignored"]) == ["python3", "-V"]  # argv (command + args) wins


def test_an_image_with_nothing_to_run_is_refused() -> None:
    with pytest.raises(ContainerError, match="neither Entrypoint nor Cmd"):
        ImageConfig.from_oci({}).command(None)


def test_env_overrides_the_image_env_and_keeps_the_rest() -> None:
    config = ImageConfig.from_oci({"Env": ["PATH=/usr/bin:/bin", "PORT=8080", "EMPTY=", "EQ=a=b"]})
    assert config.environment({"PORT": "9000", "EXTRA": "1"}) == {
        "PATH": "/usr/bin:/bin",
        "PORT": "9000",
        "EMPTY": "",
        "EQ": "a=b",
        "EXTRA": "1",
    }


@dataclass(frozen=True)
class Pushed:
    reference: str
    state_dir: Path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A bare Distribution registry (no notifications) on a free port, stopped by pid afterwards."""
    if shutil.which("docker-registry") is None or shutil.which("buildah") is None:
        pytest.fail("docker-registry and buildah are needed (Debian packages docker-registry, buildah)")
    tmp = tmp_path_factory.mktemp("registry")
    port = processes.free_port()
    config = registry_config(address=f"127.0.0.1:{port}", data_dir=tmp / "data", notify_url="http://127.0.0.1:1/")
    config.pop("notifications")
    (tmp / "config.yml").write_text(yaml.safe_dump(config))
    pid = processes.start(
        "registry", ["docker-registry", "serve", str(tmp / "config.yml")], env=os.environ, log_dir=tmp
    )
    try:
        processes.wait_until(lambda: processes.port_open(port), what="registry", timeout=20, pid=pid)
        yield f"127.0.0.1:{port}"
    finally:
        processes.stop(pid)


@pytest.fixture(scope="module")
def tiny(registry: str, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """A ~2 MB image with a shell, an Entrypoint, a Cmd, Env and a WorkingDir, pushed to the registry."""
    tmp = tmp_path_factory.mktemp("tiny")
    storage = ImageStorage.under(tmp / "build", "vfs")

    def buildah(*args: str) -> str:
        return subprocess.run(storage.buildah(*args), check=True, capture_output=True, text=True).stdout.strip()

    rootfs = tmp / "rootfs"
    for source in _TINY_FILES:
        target = rootfs / source.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    (rootfs / "bin").mkdir()
    (rootfs / "bin" / "sh").symlink_to("/usr/bin/dash")
    (rootfs / "work").mkdir()
    working = buildah("from", "scratch")
    buildah("copy", working, str(rootfs), "/")
    buildah(
        "config",
        "--entrypoint",
        '["/bin/sh", "-c"]',
        "--cmd",
        '["echo \\"$GREETING from $WHO in $(pwd)\\"; exit 3"]',
        "--env",
        "GREETING=hello",
        "--env",
        "WHO=the image",
        "--env",
        "PATH=/usr/bin:/bin",
        "--workingdir",
        "/work",
        working,
    )
    reference = f"{registry}/cd4ml/tiny:v1"
    buildah("commit", "--signature-policy", str(storage.policy), working, "localhost/tiny:v1")
    buildah(
        "push",
        "--tls-verify=false",
        "--signature-policy",
        str(storage.policy),
        "localhost/tiny:v1",
        f"docker://{reference}",
    )
    buildah("rm", working)
    return Pushed(reference, tmp / "run")


def _working_containers(container: containers.Container) -> str:
    listed = subprocess.run(
        container.storage.buildah("containers", "--format", "{{.ContainerName}}"),
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout


@pytest.mark.emulator
def test_the_image_command_runs_with_its_env_under_ours_and_its_exit_code(tiny: Pushed, tmp_path: Path) -> None:
    log = tmp_path / "tiny.log"
    container = containers.start(tiny.reference, None, {"WHO": "the test"}, state_dir=tiny.state_dir, log=log)
    try:
        assert container.wait(timeout=60) == 3
    finally:
        container.stop()
    assert "hello from the test in /work" in log.read_text()
    assert container.name not in _working_containers(container)


@pytest.mark.emulator
def test_args_replace_cmd_after_the_images_entrypoint(tiny: Pushed, tmp_path: Path) -> None:
    """A Vertex container_spec with args and no command: the image's ENTRYPOINT (here /bin/sh -c) runs them."""
    log = tmp_path / "args.log"
    container = containers.start(
        tiny.reference,
        None,
        {},
        state_dir=tiny.state_dir,
        log=log,
        args=['echo "args after $WHO\'s entrypoint"; exit 4'],
    )
    try:
        assert container.wait(timeout=60) == 4
    finally:
        container.stop()
    assert "args after the image's entrypoint" in log.read_text()


@pytest.mark.emulator
def test_argv_replaces_entrypoint_and_cmd(tiny: Pushed, tmp_path: Path) -> None:
    log = tmp_path / "argv.log"
    container = containers.start(
        tiny.reference, ["/bin/sh", "-c", 'echo "argv as $WHO"'], {}, state_dir=tiny.state_dir, log=log
    )
    try:
        assert container.wait(timeout=60) == 0
    finally:
        container.stop()
    assert "argv as the image" in log.read_text() and "hello" not in log.read_text()


@pytest.mark.emulator
def test_stop_ends_the_whole_process_group_and_removes_the_container(tiny: Pushed, tmp_path: Path) -> None:
    container = containers.start(
        tiny.reference,
        ["/bin/sh", "-c", "sleep 300; echo late"],
        {},
        state_dir=tiny.state_dir,
        log=tmp_path / "sleep.log",
    )
    with pytest.raises(TimeoutError):
        container.wait(timeout=1.0)
    assert container.name in _working_containers(container)
    started = time.monotonic()
    container.stop()
    assert time.monotonic() - started < 10
    assert not processes.alive(container.pid)
    group = subprocess.run(["pgrep", "-g", str(container.pid)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in group if processes.alive(int(pid))] == []  # no orphaned `sleep 300` (zombies aside)
    assert container.wait(timeout=0) != 0
    assert container.name not in _working_containers(container)
    container.stop()  # twice is harmless


@pytest.mark.emulator
def test_an_image_the_registry_does_not_have_is_refused_by_name(tiny: Pushed, tmp_path: Path) -> None:
    missing = tiny.reference.replace("tiny:v1", "absent:v1")
    with pytest.raises(ContainerError, match="absent:v1"):
        containers.start(missing, None, {}, state_dir=tiny.state_dir, log=tmp_path / "absent.log")
