"""The local stack refuses what IAM refuses: unchanged cd4ml code, given a stage's environment, is denied a publish
or an object its Terraform grants do not cover, with the errors Google's clients raise (PermissionDenied, Forbidden).

Starts only what it needs (the Pub/Sub and GCS emulators and the IAM proxy), not the whole stack.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.api_core.exceptions import Forbidden, InvalidArgument, PermissionDenied
from local_emulator import iam_proxy
from local_emulator import stack as local
from local_emulator.common import processes

from cd4ml import catalog, clients, events
from cd4ml.bus import Bus
from cd4ml.events import Event, PubSubMessage
from cd4ml.settings import Settings

PUBSUB_EMULATOR = local.GCLOUD_PLATFORM / "pubsub-emulator/bin/cloud-pubsub-emulator"
pytestmark = pytest.mark.skipif(not PUBSUB_EMULATOR.exists(), reason="needs the gcloud Pub/Sub emulator")


@dataclass
class Emulators:
    """The two emulators, the proxy in front of them, and a stack record whose stage_env points at it."""

    pubsub: str
    storage: str
    identities: dict[str, dict[str, str]]
    stack: local.Stack
    pids: list[int] = field(default_factory=list)

    def stage_env(self, stage: str) -> dict[str, str]:
        """The environment ``cd4ml local up`` gives the stage's process (local_emulator.stack.stage_env)."""
        return local.stage_env(self.stack, stage)


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    logs = tmp_path_factory.mktemp("iam-logs")
    ports = {name: processes.free_port() for name in ("pubsub", "storage")}
    pubsub, storage = f"127.0.0.1:{ports['pubsub']}", f"http://127.0.0.1:{ports['storage']}"
    argv, identities = iam_proxy.command(local.PROJECT, local.DATA_BUCKET, local.ARTIFACT_BUCKET, pubsub, storage)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(local.REPO), str(local.FUNCTIONS_DIR)])}
    pids = [
        processes.start(
            "pubsub", [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={ports['pubsub']}"], env=env, log_dir=logs
        ),
        processes.start(
            "storage",
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host=127.0.0.1",
                f"--port={ports['storage']}",
                "--in-memory",
            ],
            env=env,
            log_dir=logs,
        ),
        processes.start("iam", argv, env=env, log_dir=logs),
    ]
    stack = local.Stack(
        root=logs,
        endpoints={
            "pubsub": pubsub,
            "storage": storage,
            "firestore": "127.0.0.1:1",
            "vertex": "127.0.0.1:1",
            "registry": "127.0.0.1:1",
            "cloudbuild": "127.0.0.1:1",
            "gate": "http://127.0.0.1:1",
            "identities": identities,
        },
    )
    saved = dict(os.environ)
    try:
        processes.wait_until(
            lambda: (
                processes.port_open(ports["pubsub"])
                and processes.port_open(ports["storage"])
                and iam_proxy.ready(identities)
            ),
            what="emulators and IAM proxy",
            timeout=60,
        )
        os.environ.update({"PUBSUB_EMULATOR_HOST": pubsub, "STORAGE_EMULATOR_HOST": storage})
        from google.cloud import pubsub_v1

        admin = pubsub_v1.PublisherClient()
        for topic in catalog.load().topics:
            admin.create_topic(name=admin.topic_path(local.PROJECT, topic))
        storage_admin = clients.storage_client(Settings.from_env({"CD4ML_PROJECT": local.PROJECT}))
        for bucket in (local.DATA_BUCKET, local.ARTIFACT_BUCKET):
            storage_admin.create_bucket(bucket)
        yield Emulators(pubsub, storage, identities, stack, pids)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for pid in pids:
            processes.stop(pid)


@pytest.fixture
def as_stage(emulators: Emulators, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Put this test process in a stage's environment (its emulator endpoints), as its function process is."""

    def enter(stage: str) -> None:
        env = emulators.stage_env(stage)
        for name in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST"):
            monkeypatch.setenv(name, env[name])

    return enter


def _submitted(run_id: str) -> Event:
    return Event.new(
        events.TRAINING_SUBMITTED,
        run_id,
        {
            "model": "digits",
            "job": f"projects/{local.PROJECT}/locations/us-central1/customJobs/1",
            "dataset_sha256": "0" * 64,
            "model_dir": f"gs://{local.ARTIFACT_BUCKET}/runs/{run_id}/model/",
        },
        source="//test",
    )


def _fetched(run_id: str) -> Event:
    return Event.new(
        events.DATA_FETCHED,
        run_id,
        {
            "model": "digits",
            "dataset": {
                "uri": f"gs://{local.DATA_BUCKET}/datasets/digits/{'0' * 64}/",
                "sha256": "0" * 64,
                "rows": 1,
                "bytes": 1,
                "files": 1,
            },
        },
        source="//test",
    )


def test_a_stage_is_denied_a_publish_its_catalog_entry_does_not_emit(as_stage: Any) -> None:
    """submit_training emits training.submitted/failed; data.fetched is fetch_data's to publish, as in production."""
    as_stage("submit_training")
    bus = Bus(local.PROJECT)
    assert bus.publish(_submitted("digits-20250101t000000z"))  # its own type: published
    with pytest.raises(PermissionDenied, match=r"User not authorized to perform this action\."):
        bus.publish(_fetched("digits-20250101t000000z"))


def test_a_stage_dead_letters_to_its_own_topic_only_and_within_pubsub_limits(as_stage: Any) -> None:
    as_stage("evaluate")
    bus = Bus(local.PROJECT)
    message = PubSubMessage(message_id="1", publish_time=events.now(), attributes={"ce-type": "x"}, data=b"{}")
    assert bus.dead_letter(catalog.dead_letter_topic("evaluate"), message, stage="evaluate", error="bad")
    with pytest.raises(PermissionDenied):
        bus.dead_letter(catalog.dead_letter_topic("fetch_data"), message, stage="evaluate", error="bad")
    crowded = PubSubMessage(
        message_id="2",
        publish_time=events.now(),
        data=b"{}",
        subscription="s",
        attributes={f"a{i}": "v" for i in range(100)},
    )
    assert bus.dead_letter(catalog.dead_letter_topic("evaluate"), crowded, stage="evaluate", error="é" * 2000)


def test_pubsub_limits_are_enforced_through_the_proxy(as_stage: Any) -> None:
    """The emulator takes 101 attributes or a 1025-byte value; Pub/Sub (and so the proxy) answers INVALID_ARGUMENT."""
    as_stage("evaluate")
    topic = f"projects/{local.PROJECT}/topics/{catalog.dead_letter_topic('evaluate')}"

    def publish(**attributes: str) -> str:
        # A fresh client each time: google-cloud-pubsub 2.44 refuses any publish after a failed one on a client.
        return str(clients.publisher_client().publish(topic, b"{}", **attributes).result(timeout=30))

    with pytest.raises(InvalidArgument, match="maximum allowed is 100"):
        publish(**{f"a{i}": "v" for i in range(101)})
    with pytest.raises(InvalidArgument, match="has a value that is too long"):
        publish(error="e" * 1025)
    assert publish(error="e" * 1024)


def test_storage_grants_follow_the_bindings(emulators: Emulators, as_stage: Any) -> None:
    settings = Settings.from_env({"CD4ML_PROJECT": local.PROJECT})
    os.environ.update(emulators.identities["admin"])
    admin = clients.storage_client(settings)
    admin.bucket(local.DATA_BUCKET).blob("sources/digits/digits.csv").upload_from_string("a,b\n1,2\n")
    admin.bucket(local.ARTIFACT_BUCKET).blob("builds/r1/context.tar.gz").upload_from_string("ctx")

    as_stage("fetch_data")
    fetch = clients.storage_client(settings)
    data = fetch.bucket(local.DATA_BUCKET)
    data.copy_blob(data.blob("sources/digits/digits.csv"), data, "datasets/digits/abc/digits.csv")
    listed = [b.name for b in fetch.list_blobs(local.DATA_BUCKET, prefix="datasets/")]
    assert listed == ["datasets/digits/abc/digits.csv"]
    with pytest.raises(
        Forbidden,
        match=re.escape(
            "cd4ml-fetch-data@cd4ml-local.iam.gserviceaccount.com does not have "
            "storage.objects.create access to the Google Cloud Storage object"
        ),
    ):
        data.blob("sources/digits/planted.csv").upload_from_string("x")
    with pytest.raises(Forbidden, match=r"storage\.objects\.get"):
        fetch.bucket(local.ARTIFACT_BUCKET).blob("builds/r1/context.tar.gz").download_as_bytes()

    as_stage("watch_training")
    watch = clients.storage_client(settings)
    with pytest.raises(Forbidden, match=r"storage\.objects\.list access to the Google Cloud Storage bucket"):
        list(watch.list_blobs(local.ARTIFACT_BUCKET))  # runs/ only, as the condition on objectListPrefix says


def test_the_training_identity_writes_its_run_and_nothing_else(emulators: Emulators, monkeypatch: Any) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulators.identities["training"]["STORAGE_EMULATOR_HOST"])
    trainer = clients.storage_client(Settings.from_env({"CD4ML_PROJECT": local.PROJECT}))
    artifacts = trainer.bucket(local.ARTIFACT_BUCKET)
    big = os.urandom(9 * 1024 * 1024)  # over the client's 8 MB threshold: a resumable upload, through the proxy
    artifacts.blob("runs/r1/model/model.joblib").upload_from_string(big)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulators.identities["admin"]["STORAGE_EMULATOR_HOST"])
    owner = clients.storage_client(Settings.from_env({"CD4ML_PROJECT": local.PROJECT}))
    assert owner.bucket(local.ARTIFACT_BUCKET).blob("runs/r1/model/model.joblib").download_as_bytes() == big
    with pytest.raises(Forbidden, match="cd4ml-training@"):
        artifacts.blob("manifests/digits.yaml").upload_from_string("name: evil")
    # Create only, and reads under packages/ alone: no trainer reads another run's (or model's) model.
    with pytest.raises(Forbidden, match=r"storage\.objects\.get"):
        artifacts.blob("runs/r1/model/model.joblib").download_as_bytes()


def test_stage_env_gives_each_function_its_own_identity(emulators: Emulators) -> None:
    env = emulators.stage_env("evaluate")
    assert env["PUBSUB_EMULATOR_HOST"] == emulators.identities["function:evaluate"]["PUBSUB_EMULATOR_HOST"]
    assert env["STORAGE_EMULATOR_HOST"] == emulators.identities["function:evaluate"]["STORAGE_EMULATOR_HOST"]
    assert env["PUBSUB_EMULATOR_HOST"] != emulators.pubsub


def test_on_build_may_release_image_pushed_the_build_push_join(as_stage: Any) -> None:
    """Issue 7.2: when the push notice came before SUCCESS, on_build publishes image.pushed; its grant must cover it."""
    as_stage("on_build")
    pushed = Event.new(
        events.IMAGE_PUSHED,
        "digits-20250101t000000z",
        {"model": "digits", "reference": f"127.0.0.1:5000/cd4ml/digits@sha256:{'0' * 64}"},
        source="//test",
    )
    assert Bus(local.PROJECT).publish(pushed)
    as_stage("on_push")  # and on_build's other outputs stay on_build's
    with pytest.raises(PermissionDenied):
        Bus(local.PROJECT).publish(
            Event.new(
                events.IMAGE_FAILED,
                "digits-20250101t000000z",
                {"model": "digits", "status": "FAILURE", "error": "x"},
                source="//test",
            )
        )
