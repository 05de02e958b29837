"""The local registry: Distribution push notifications become Artifact Registry `gcr` messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from local_emulator.common import processes
from local_emulator.containers.baseimage import BaseImageSpec, write_oci_layout
from local_emulator.registry import GcrMessage, gcr_messages, registry_config

PROJECT = "registry-test"
HOST = "127.0.0.1:5000"
DIGEST = "sha256:" + "b" * 64
PUBSUB_EMULATOR = Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator")


def _event(action: str, **target: Any) -> dict[str, Any]:
    return {"id": "e1", "action": action, "target": {"repository": "cd4ml/digits", **target}}


def test_manifest_push_with_tag_is_an_insert_with_digest_and_tag() -> None:
    envelope = {
        "events": [_event("push", mediaType="application/vnd.oci.image.manifest.v1+json", digest=DIGEST, tag="run-1")]
    }
    [message] = gcr_messages(envelope, HOST)
    assert json.loads(message.to_json()) == {
        "action": "INSERT",
        "digest": f"{HOST}/cd4ml/digits@{DIGEST}",
        "tag": f"{HOST}/cd4ml/digits:run-1",
    }


def test_push_by_digest_has_no_tag_and_blobs_and_pulls_are_ignored() -> None:
    envelope = {
        "events": [
            _event("push", mediaType="application/vnd.docker.distribution.manifest.v2+json", digest=DIGEST),
            _event("push", mediaType="application/vnd.oci.image.layer.v1.tar+gzip", digest=DIGEST),
            _event("pull", mediaType="application/vnd.oci.image.manifest.v1+json", digest=DIGEST, tag="x"),
        ]
    }
    assert gcr_messages(envelope, HOST) == [GcrMessage("INSERT", digest=f"{HOST}/cd4ml/digits@{DIGEST}")]


def test_deletes_carry_what_the_registry_reported() -> None:
    envelope = {"events": [_event("delete", digest=DIGEST), _event("delete", tag="old")]}
    assert [json.loads(m.to_json()) for m in gcr_messages(envelope, HOST)] == [
        {"action": "DELETE", "digest": f"{HOST}/cd4ml/digits@{DIGEST}"},
        {"action": "DELETE", "tag": f"{HOST}/cd4ml/digits:old"},
    ]


def test_config_asks_for_one_event_per_manifest() -> None:
    config = registry_config(address=HOST, data_dir=Path("/data"), notify_url="http://127.0.0.1:1/events")
    [endpoint] = config["notifications"]["endpoints"]
    assert endpoint["ignore"] == {"mediatypes": ["application/octet-stream"], "actions": ["pull"]}
    assert config["storage"]["filesystem"]["rootdirectory"] == "/data"


@dataclass(frozen=True)
class Registry:
    """A running `python -m local_emulator.registry` and the subscription to its gcr topic."""

    host: str
    subscription: str
    state_dir: Path
    pid: int


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Pub/Sub emulator + gcr topic + the registry process; every process is stopped by pid afterwards."""
    tmp = tmp_path_factory.mktemp("registry")
    pubsub_port, registry_port = processes.free_port(), processes.free_port()
    pids: list[int] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{pubsub_port}")
        try:
            pids.append(
                processes.start(
                    "pubsub",
                    [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={pubsub_port}"],
                    env=os.environ,
                    log_dir=tmp,
                )
            )
            processes.wait_until(
                lambda: processes.port_open(pubsub_port), what="pubsub emulator", timeout=30, pid=pids[0]
            )
            from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

            topic = PublisherClient().create_topic(name=f"projects/{PROJECT}/topics/gcr").name
            subscription = (
                SubscriberClient()
                .create_subscription(name=f"projects/{PROJECT}/subscriptions/gcr-test", topic=topic)
                .name
            )
            argv = [
                sys.executable,
                "-m",
                "local_emulator.registry",
                "--port",
                str(registry_port),
                "--state-dir",
                str(tmp / "state"),
                "--project",
                PROJECT,
            ]
            pids.append(processes.start("registry", argv, env=os.environ, log_dir=tmp))
            processes.wait_until(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{registry_port}/v2/", timeout=1).status == 200,
                what="registry",
                timeout=20,
                pid=pids[1],
                log=tmp / "registry.log",
            )
            yield Registry(f"127.0.0.1:{registry_port}", subscription, tmp / "state", pids[1])
        finally:
            for pid in reversed(pids):
                processes.stop(pid)


def _tiny_image(tmp: Path) -> str:
    """An OCI layout holding one small file; returns its skopeo reference."""
    rootfs = tmp / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        data = os.urandom(1024)
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    write_oci_layout(rootfs, tmp / "layout", BaseImageSpec(packages=("none",)))
    return f"oci:{tmp / 'layout'}:base"


def _pull(subscription: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    from google.cloud.pubsub_v1 import SubscriberClient

    subscriber = SubscriberClient()
    received: list[dict[str, Any]] = []

    def _got_enough() -> bool:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=2)
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
            received.extend(json.loads(m.message.data) for m in response.received_messages)
        return len(received) >= count

    processes.wait_until(_got_enough, what=f"{count} gcr message(s)", timeout=timeout)
    return received


@pytest.mark.emulator
def test_pushing_an_image_publishes_one_gcr_insert(registry: Registry, tmp_path: Path) -> None:
    digest_file = tmp_path / "digest"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--digestfile",
            str(digest_file),
            _tiny_image(tmp_path),
            f"docker://{registry.host}/cd4ml/tiny:v1",
        ],
        check=True,
    )
    digest = digest_file.read_text().strip()

    assert _pull(registry.subscription, 1) == [
        {"action": "INSERT", "digest": f"{registry.host}/cd4ml/tiny@{digest}", "tag": f"{registry.host}/cd4ml/tiny:v1"}
    ]

    request = urllib.request.Request(f"http://{registry.host}/v2/cd4ml/tiny/manifests/{digest}", method="DELETE")
    assert urllib.request.urlopen(request, timeout=5).status == 202
    deleted = _pull(registry.subscription, 2)  # Distribution reports the manifest and, separately, its tag
    assert sorted(deleted, key=lambda message: "tag" in message) == [
        {"action": "DELETE", "digest": f"{registry.host}/cd4ml/tiny@{digest}"},
        {"action": "DELETE", "tag": f"{registry.host}/cd4ml/tiny:v1"},
    ]


@pytest.mark.emulator
def test_sigterm_stops_the_registry_child_too(registry: Registry, tmp_path: Path) -> None:
    """A second instance on its own port: SIGTERM ends it and the docker-registry it started."""
    port = processes.free_port()
    argv = [
        sys.executable,
        "-m",
        "local_emulator.registry",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
        "--project",
        PROJECT,
    ]
    pid = processes.start("second", argv, env=os.environ, log_dir=tmp_path)
    try:
        log = tmp_path / "second.log"
        processes.wait_until(lambda: '"ready"' in log.read_text(), what="second registry", timeout=20, pid=pid, log=log)
        ready = next(json.loads(line) for line in log.read_text().splitlines() if '"ready"' in line)
        child = int(ready["pid"])
        os.kill(pid, 15)
        processes.wait_until(
            lambda: not processes.alive(pid) and not processes.alive(child), what="shutdown", timeout=10
        )
        assert not processes.port_open(port)
    finally:
        processes.stop(pid)
