"""The local Vertex AI stand-in, driven through the real ``aiplatform_v1.JobServiceClient`` over gRPC.

Tests marked ``emulator`` run trainers, whose packages live in a ``gcp-storage-emulator`` subprocess,
in clean environments pip-installs from PyPI (cached in ``~/.cache/cd4ml``: the first run downloads
scikit-learn and friends); the others need nothing outside this process (a job with a second worker
pool fails before touching GCS).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.services.job_service.transports.grpc import JobServiceGrpcTransport
from google.cloud.storage import Client as StorageClient
from local_emulator.vertex.envs import default_cache_dir
from local_emulator.vertex.server import VertexServer, serve

REPO = Path(__file__).resolve().parents[2]
PARENT = "projects/test-project/locations/us-central1"
BUCKET = "cd4ml-test"
JobState = aiplatform_v1.JobState
TERMINAL = {JobState.JOB_STATE_SUCCEEDED, JobState.JOB_STATE_FAILED, JobState.JOB_STATE_CANCELLED}
# The image examples/digits trains on; its local stand-in environment has scikit-learn 1.6.1,
# numpy, pandas, scipy, joblib and google-cloud-storage (local_emulator/vertex/images.py).
EXECUTOR = "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-6:latest"
LOCAL_REGISTRY = "127.0.0.1:1"  # nothing listens there: pulls fail fast

TRAINER = '''\
"""A tiny trainer: records its arguments and environment as its "model"."""
import argparse, json, os, subprocess, sys, time

from google.cloud import storage

ENV = ["AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "CLOUD_ML_PROJECT_ID",
       "CLOUD_ML_REGION", "CLOUD_ML_JOB_ID", "CLUSTER_SPEC", "TF_CONFIG", "STORAGE_EMULATOR_HOST",
       "EXTRA_SETTING", "PYTHONPATH", "CD4ML_LEAK", "HOME"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--spawn", action="store_true", help="leave a grandchild behind")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--import", dest="modules", action="append", default=[])
    args = parser.parse_args()
    for module in args.modules:
        __import__(module)
    with open("trainer.pid", "w") as pid_file:
        pid_file.write(str(os.getpid()))
    if args.spawn:
        child = subprocess.Popen(["sleep", "60"])
        with open("grandchild.pid", "w") as pid_file:
            pid_file.write(str(child.pid))
    if args.crash:
        for line in range(30):
            print(f"noise line {line}", file=sys.stderr)
        print("ValueError: the training data is bad", file=sys.stderr)
        sys.exit(3)
    time.sleep(args.sleep)
    print("training done")
    bucket, _, prefix = os.environ["AIP_MODEL_DIR"].removeprefix("gs://").partition("/")
    client = storage.Client(project=os.environ["CLOUD_ML_PROJECT_ID"])
    model = {"argv": sys.argv[1:], "env": {name: os.environ.get(name) for name in ENV},
             "executable": sys.executable, "path": sys.path}
    client.bucket(bucket).blob(prefix + "model.json").upload_from_string(json.dumps(model))


if __name__ == "__main__":
    main()
'''


# ----------------------------------------------------------------------------- helpers


def _free_port() -> int:
    from local_emulator.common import processes

    return processes.free_port()


def _client(address: str) -> aiplatform_v1.JobServiceClient:
    channel = grpc.insecure_channel(address)
    return aiplatform_v1.JobServiceClient(transport=JobServiceGrpcTransport(channel=channel))


def _pool(**spec: object) -> dict[str, object]:
    return {"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1, **spec}


def _quick_job(run_id: str = "run-1", **labels: str) -> aiplatform_v1.CustomJob:
    """A valid job that fails as soon as it runs (a second worker pool with replicas), touching nothing."""
    spec = {
        "executor_image_uri": EXECUTOR,
        "package_uris": [f"gs://{BUCKET}/packages/never-read-0.1.tar.gz"],
        "python_module": "never.run",
    }
    return aiplatform_v1.CustomJob(
        display_name=f"train-{run_id}",
        labels={"cd4ml_run_id": run_id, **labels},
        job_spec={"worker_pool_specs": [_pool(python_package_spec=spec), _pool(python_package_spec=spec)]},
    )


def _container_job(image_uri: str) -> aiplatform_v1.CustomJob:
    return aiplatform_v1.CustomJob(
        display_name="in-a-container",
        job_spec={"worker_pool_specs": [_pool(container_spec={"image_uri": image_uri, "command": ["train"]})]},
    )


def _package_job(
    package_uri: str,
    *args: str,
    output: str = f"gs://{BUCKET}/runs/r1",
    timeout_s: int = 0,
    run_id: str = "run-1",
) -> aiplatform_v1.CustomJob:
    spec = {
        "executor_image_uri": EXECUTOR,
        "package_uris": [package_uri],
        "python_module": "tinytrainer.task",
        "args": list(args),
        "env": [{"name": "EXTRA_SETTING", "value": "from-spec"}],
    }
    job_spec: dict[str, object] = {
        "worker_pool_specs": [_pool(python_package_spec=spec)],
        "base_output_directory": {"output_uri_prefix": output},
    }
    if timeout_s:
        job_spec["scheduling"] = {"timeout": {"seconds": timeout_s}}
    return aiplatform_v1.CustomJob(display_name="tiny", labels={"cd4ml_run_id": run_id}, job_spec=job_spec)


def _wait(
    client: aiplatform_v1.JobServiceClient,
    name: str,
    until: Callable[[aiplatform_v1.CustomJob], bool] = lambda job: job.state in TERMINAL,
    timeout_s: float = 60.0,
) -> aiplatform_v1.CustomJob:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get_custom_job(name=name)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job stuck in {job.state.name}"
        time.sleep(0.05)


def _job_dir(state_dir: Path, job: aiplatform_v1.CustomJob) -> Path:
    return state_dir / "customJobs" / job.name.rsplit("/", 1)[1]


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.05)


def _build_sdist(path: Path) -> None:
    files = {
        "tinytrainer-0.1/setup.py": 'from setuptools import setup\nsetup(name="tinytrainer", '
        'version="0.1", packages=["tinytrainer"], install_requires=["tomli"])\n',
        "tinytrainer-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: tinytrainer\nVersion: 0.1\n",
        "tinytrainer-0.1/tinytrainer/__init__.py": "",
        "tinytrainer-0.1/tinytrainer/task.py": TRAINER,
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _build_wheel(path: Path) -> None:
    dist_info = "tinytrainer-0.1.dist-info"
    files = {
        "tinytrainer/__init__.py": "",
        "tinytrainer/task.py": TRAINER,
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: tinytrainer\nVersion: 0.1\nRequires-Dist: tomli\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr(f"{dist_info}/RECORD", "".join(f"{name},,\n" for name in [*files, f"{dist_info}/RECORD"]))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gcs_endpoint() -> Iterator[str]:
    """A gcp-storage-emulator subprocess, stopped by pid at teardown."""
    port = _free_port()
    executable = Path(sys.executable).with_name("gcp-storage-emulator")
    process = subprocess.Popen(
        [str(executable), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None, "gcp-storage-emulator exited"
                assert time.monotonic() < deadline, "gcp-storage-emulator did not start"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def gcs(gcs_endpoint: str) -> StorageClient:
    client = StorageClient(
        project="test-project",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs_endpoint},
    )
    client.create_bucket(BUCKET)
    return client


@pytest.fixture(scope="module")
def packages(gcs: StorageClient, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The tiny trainer uploaded as an sdist and as a wheel: {"sdist": gs://…, "wheel": gs://…}."""
    build = tmp_path_factory.mktemp("dist")
    _build_sdist(build / "tinytrainer-0.1.tar.gz")
    _build_wheel(build / "tinytrainer-0.1-py3-none-any.whl")
    uris = {}
    for kind, name in (("sdist", "tinytrainer-0.1.tar.gz"), ("wheel", "tinytrainer-0.1-py3-none-any.whl")):
        gcs.bucket(BUCKET).blob(f"packages/{name}").upload_from_filename(str(build / name))
        uris[kind] = f"gs://{BUCKET}/packages/{name}"
    return uris


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., VertexServer]]:
    """Start stand-ins in this process (state under tmp_path/state by default); all stopped at teardown."""
    started: list[VertexServer] = []

    def _start(
        max_concurrent: int = 2,
        gcs_endpoint: str | None = None,
        state_dir: Path | None = None,
        registry: str | None = LOCAL_REGISTRY,
        **extra_env: str,
    ) -> VertexServer:
        environ = {**os.environ, **extra_env}
        if gcs_endpoint:
            environ["STORAGE_EMULATOR_HOST"] = gcs_endpoint
        server = serve(
            "127.0.0.1",
            0,
            state_dir or tmp_path / "state",
            max_concurrent,
            environ=environ,
            cache_dir=default_cache_dir(),  # shared across runs: trainer environments are content-addressed
            registry=registry,
        )
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop(0)


@pytest.fixture
def vertex(start: Callable[..., VertexServer]) -> aiplatform_v1.JobServiceClient:
    """A client of a stand-in without GCS."""
    return _client(start().address)


# ----------------------------------------------------------------------------- without GCS


def test_a_job_is_queued_then_fails_with_a_clear_message(vertex: aiplatform_v1.JobServiceClient) -> None:
    created = vertex.create_custom_job(parent=PARENT, custom_job=_quick_job("run-7"))
    assert created.name.startswith(f"{PARENT}/customJobs/")
    assert created.name.rsplit("/", 1)[1].isdigit()
    assert created.state == JobState.JOB_STATE_QUEUED
    assert dict(created.labels) == {"cd4ml_run_id": "run-7"}
    job = _wait(vertex, created.name)
    assert job.state == JobState.JOB_STATE_FAILED
    assert "distributed jobs (worker pools after the first) are not supported" in job.error.message
    assert job.error.code != 0
    assert job.create_time <= job.end_time


@pytest.mark.parametrize(
    "uri",
    [
        "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-6:latest",
        "europe-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-6:latest",
        "asia-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest",
        "us-docker.pkg.dev/vertex-ai/training/pytorch-xla.2-4.py310:latest",
        "europe-docker.pkg.dev/vertex-ai/training/xgboost-cpu.2-1:latest",
    ],
)
def test_prebuilt_training_containers_are_accepted(vertex: aiplatform_v1.JobServiceClient, uri: str) -> None:
    """The images listed at https://cloud.google.com/vertex-ai/docs/training/pre-built-containers, in any region."""
    job = _quick_job()
    job.job_spec.worker_pool_specs[0].python_package_spec.executor_image_uri = uri
    assert vertex.create_custom_job(parent=PARENT, custom_job=job).state == JobState.JOB_STATE_QUEUED


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("python:3.11-slim", "is not one of Vertex AI's prebuilt training containers"),
        ("gcr.io/my-project/trainer:1", "is not one of Vertex AI's prebuilt training containers"),
        # A prediction image is not a training image.
        ("us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-6:latest", "is not one of"),
        # sklearn-cpu.1-3 is not on Google's list of prebuilt training containers (1.6, 1.0, 0.23 are)
        ("us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-3:latest", "is not one of"),
        ("us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.9-9:latest", "is not one of"),
        ("us-central1-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-6:latest", "is not one of"),
        # "Using image names without the latest tag isn't supported." (same page)
        ("us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-6:1.6", "only supported with the 'latest' tag"),
    ],
)
def test_other_executor_images_are_invalid(vertex: aiplatform_v1.JobServiceClient, uri: str, reason: str) -> None:
    """Source: https://cloud.google.com/vertex-ai/docs/training/pre-built-containers (PythonPackageSpec.executor_image_uri)."""
    job = _quick_job()
    job.job_spec.worker_pool_specs[1].python_package_spec.executor_image_uri = uri
    with pytest.raises(gexc.InvalidArgument) as raised:
        vertex.create_custom_job(parent=PARENT, custom_job=job)
    assert "worker_pool_specs[1].python_package_spec.executor_image_uri" in raised.value.message
    assert reason in raised.value.message
    assert list(vertex.list_custom_jobs(parent=PARENT)) == []


@pytest.mark.parametrize("registry", [LOCAL_REGISTRY, None])
def test_container_images_outside_the_local_registry_are_refused(
    start: Callable[..., VertexServer], registry: str | None
) -> None:
    """Vertex would pull any image its service agent can read; the stand-in can only run local ones, and says so."""
    client = _client(start(registry=registry).address)
    with pytest.raises(gexc.InvalidArgument) as raised:
        client.create_custom_job(parent=PARENT, custom_job=_container_job("europe-docker.pkg.dev/p/repo/trainer:1"))
    message = raised.value.message
    assert "worker_pool_specs[0].container_spec.image_uri" in message
    assert "cannot run locally" in message
    assert "On Vertex AI this job would pull the image" in message
    assert (f"the local registry {registry}" if registry else "none is configured") in message


def test_a_container_image_of_the_local_registry_is_run_in_that_image(vertex: aiplatform_v1.JobServiceClient) -> None:
    """Accepted at creation; here the registry is unreachable, so the pull (or the missing runner) fails the job."""
    image = f"{LOCAL_REGISTRY}/cd4ml/trainer:run-1"
    created = vertex.create_custom_job(parent=PARENT, custom_job=_container_job(image))
    job = _wait(vertex, created.name, timeout_s=120)
    assert job.state == JobState.JOB_STATE_FAILED
    assert (
        f"The image {image} could not be pulled or started" in job.error.message
        or "need local_emulator.containers" in job.error.message
    )


def test_list_filters_by_labels(vertex: aiplatform_v1.JobServiceClient) -> None:
    for _ in range(3):
        vertex.create_custom_job(parent=PARENT, custom_job=_quick_job("run-a"))
    for _ in range(2):
        vertex.create_custom_job(parent=PARENT, custom_job=_quick_job("run-b", model="digits"))
    vertex.create_custom_job(parent="projects/test-project/locations/europe-west4", custom_job=_quick_job("run-a"))

    def count(filter_text: str, parent: str = PARENT) -> int:
        return len(list(vertex.list_custom_jobs(request={"parent": parent, "filter": filter_text})))

    assert count('labels.cd4ml_run_id="run-a"') == 3
    assert count("labels.cd4ml_run_id=run-b") == 2
    assert count('labels.cd4ml_run_id="run-b" AND labels.model="digits"') == 2
    assert count('labels.cd4ml_run_id="run-a" AND labels.model="digits"') == 0
    assert count("labels.model:*") == 2
    assert count('labels.cd4ml_run_id="run-c"') == 0
    assert count("") == 5
    assert count('labels.cd4ml_run_id="run-a"', "projects/test-project/locations/europe-west4") == 1
    names = [job.name for job in vertex.list_custom_jobs(parent=PARENT)]
    assert len(set(names)) == 5


def test_list_rejects_an_unsupported_filter(vertex: aiplatform_v1.JobServiceClient) -> None:
    with pytest.raises(gexc.InvalidArgument, match="Unsupported filter term"):
        list(vertex.list_custom_jobs(request={"parent": PARENT, "filter": 'labels.a="b" OR labels.a="c"'}))


def test_unknown_job_is_not_found(vertex: aiplatform_v1.JobServiceClient) -> None:
    with pytest.raises(gexc.NotFound):
        vertex.get_custom_job(name=f"{PARENT}/customJobs/123456789")
    with pytest.raises(gexc.NotFound):
        vertex.cancel_custom_job(name=f"{PARENT}/customJobs/123456789")


def test_malformed_name_is_invalid(vertex: aiplatform_v1.JobServiceClient) -> None:
    with pytest.raises(gexc.InvalidArgument, match="customJobs/"):
        vertex.get_custom_job(name="customJobs/abc")


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (aiplatform_v1.CustomJob(), ["custom_job.display_name", "worker_pool_specs; Message: At least one"]),
        (
            aiplatform_v1.CustomJob(
                display_name="x",
                job_spec={"worker_pool_specs": [{"replica_count": 2, "container_spec": {"image_uri": "i"}}]},
            ),
            ["must have replica_count 1, got 2", "machine_spec.machine_type"],
        ),
        (
            aiplatform_v1.CustomJob(display_name="x", job_spec={"worker_pool_specs": [_pool()]}),
            ["Exactly one of container_spec or python_package_spec"],
        ),
        (
            aiplatform_v1.CustomJob(
                display_name="x",
                job_spec={"worker_pool_specs": [_pool(python_package_spec={"package_uris": ["/tmp/x.tar.gz"]})]},
            ),
            ["executor_image_uri", "python_module", "is not a Cloud Storage object URI"],
        ),
        (
            aiplatform_v1.CustomJob(
                display_name="x",
                labels={"Run": "a", "run_id": "2024-01-01T00:00"},
                job_spec={"worker_pool_specs": [_pool(container_spec={"image_uri": "i"})]},
            ),
            ["Invalid label key 'Run'", "Invalid value '2024-01-01T00:00'"],
        ),
    ],
)
def test_invalid_jobs_are_rejected_with_every_problem(
    vertex: aiplatform_v1.JobServiceClient, job: aiplatform_v1.CustomJob, expected: list[str]
) -> None:
    with pytest.raises(gexc.InvalidArgument) as raised:
        vertex.create_custom_job(parent=PARENT, custom_job=job)
    for fragment in expected:
        assert fragment in raised.value.message
    assert list(vertex.list_custom_jobs(parent=PARENT)) == []


def test_invalid_parent_is_rejected(vertex: aiplatform_v1.JobServiceClient) -> None:
    with pytest.raises(gexc.InvalidArgument, match="projects/"):
        vertex.create_custom_job(parent="projects/p", custom_job=_quick_job())


def test_cancelling_a_finished_job_is_a_failed_precondition(vertex: aiplatform_v1.JobServiceClient) -> None:
    job = _wait(vertex, vertex.create_custom_job(parent=PARENT, custom_job=_quick_job()).name)
    with pytest.raises(gexc.FailedPrecondition, match="JOB_STATE_FAILED"):
        vertex.cancel_custom_job(name=job.name)


def test_a_restarted_server_still_answers_for_its_jobs(start: Callable[..., VertexServer], tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(state_dir=state)
    client = _client(first.address)
    finished = _wait(client, client.create_custom_job(parent=PARENT, custom_job=_quick_job()).name)
    first.stop(0)
    # A record left in flight by a server that died without shutting down.
    record = json.loads((state / "customJobs" / f"{finished.name.rsplit('/', 1)[1]}.json").read_text())
    record.update(name=f"{PARENT}/customJobs/42", state="JOB_STATE_RUNNING")
    record.pop("error"), record.pop("endTime")
    (state / "customJobs" / "42.json").write_text(json.dumps(record))

    client = _client(start(state_dir=state).address)
    again = client.get_custom_job(name=finished.name)
    assert again.state == JobState.JOB_STATE_FAILED
    assert again.error.message == finished.error.message
    interrupted = client.get_custom_job(name=f"{PARENT}/customJobs/42")
    assert interrupted.state == JobState.JOB_STATE_FAILED
    assert "stopped while the job was JOB_STATE_RUNNING" in interrupted.error.message
    newer = client.create_custom_job(parent=PARENT, custom_job=_quick_job())
    assert int(newer.name.rsplit("/", 1)[1]) > int(finished.name.rsplit("/", 1)[1])
    assert len(list(client.list_custom_jobs(parent=PARENT))) == 3


def test_a_busy_port_is_an_error(start: Callable[..., VertexServer], tmp_path: Path) -> None:
    running = start()
    with pytest.raises(OSError, match="cannot listen"):
        serve("127.0.0.1", running.port, tmp_path / "other-state")


def test_cli_logs_json_and_exits_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_emulator.vertex",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(tmp_path / "state"),
            "--max-concurrent",
            "1",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        client = aiplatform_v1.JobServiceClient(transport=JobServiceGrpcTransport(channel=channel))
        job = _wait(client, client.create_custom_job(parent=PARENT, custom_job=_quick_job()).name)
        assert job.state == JobState.JOB_STATE_FAILED
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert stdout == b""
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    assert {"severity", "message", "time"} <= set(lines[0])
    messages = [line["message"] for line in lines]
    assert "serving" in messages
    assert "job created" in messages
    assert messages[-1] == "stopped"


# ----------------------------------------------------------------------------- with GCS


@pytest.mark.emulator
@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_python_package_job_trains_and_writes_the_model(
    kind: str,
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    gcs: StorageClient,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    output = f"gs://{BUCKET}/runs/{kind}"
    created = client.create_custom_job(
        parent=PARENT, custom_job=_package_job(packages[kind], "--epochs", "3", output=output)
    )
    job = _wait(client, created.name)

    assert job.state == JobState.JOB_STATE_SUCCEEDED, job.error.message
    assert not job.error.message
    assert job.create_time <= job.start_time <= job.end_time
    assert dict(job.labels) == {"cd4ml_run_id": "run-1"}
    model = json.loads(gcs.bucket(BUCKET).blob(f"runs/{kind}/model/model.json").download_as_bytes())
    assert model["argv"] == ["--epochs", "3"]
    env = model["env"]
    job_id = job.name.rsplit("/", 1)[1]
    assert env["AIP_MODEL_DIR"] == f"{output}/model/"
    assert env["AIP_CHECKPOINT_DIR"] == f"{output}/checkpoints/"
    assert env["AIP_TENSORBOARD_LOG_DIR"] == f"{output}/logs/"
    assert (env["CLOUD_ML_PROJECT_ID"], env["CLOUD_ML_REGION"], env["CLOUD_ML_JOB_ID"]) == (
        "test-project",
        "us-central1",
        job_id,
    )
    assert env["STORAGE_EMULATOR_HOST"] == gcs_endpoint
    assert env["EXTRA_SETTING"] == "from-spec"
    cluster_spec = json.loads(env["CLUSTER_SPEC"])
    assert cluster_spec["cluster"] == {"workerpool0": ["localhost:2222"]}
    assert cluster_spec["task"] == {"type": "workerpool0", "index": 0}
    assert json.loads(env["TF_CONFIG"])["task"] == {"type": "chief", "index": 0}
    assert (_job_dir(tmp_path / "state", job) / "stdout.log").read_text() == "training done\n"


@pytest.mark.emulator
def test_crashing_trainer_fails_with_its_stderr_tail(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    created = client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"], "--crash"))
    job = _wait(client, created.name)

    assert job.state == JobState.JOB_STATE_FAILED
    assert "exited with a non-zero status of 3" in job.error.message
    assert job.error.message.endswith("ValueError: the training data is bad")
    assert "noise line 29" in job.error.message
    assert "noise line 10" not in job.error.message  # only the last 20 lines
    assert "training done" not in (_job_dir(tmp_path / "state", job) / "stdout.log").read_text()


@pytest.mark.emulator
def test_missing_package_fails_the_job(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    gcs: StorageClient,
) -> None:
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    uri = f"gs://{BUCKET}/packages/absent-0.1.tar.gz"
    job = _wait(client, client.create_custom_job(parent=PARENT, custom_job=_package_job(uri)).name)
    assert job.state == JobState.JOB_STATE_FAILED
    assert f"The Python package {uri} does not exist" in job.error.message


@pytest.mark.emulator
def test_timeout_kills_the_trainer(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    created = client.create_custom_job(
        parent=PARENT, custom_job=_package_job(packages["sdist"], "--sleep", "60", timeout_s=2)
    )
    job = _wait(client, created.name, timeout_s=30)
    assert job.state == JobState.JOB_STATE_FAILED
    assert "exceeded its timeout of 2 s" in job.error.message
    _wait_dead(int((_job_dir(tmp_path / "state", job) / "trainer.pid").read_text()))


@pytest.mark.emulator
def test_at_most_max_concurrent_jobs_run_and_cancel_kills_the_trainer(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    client = _client(start(max_concurrent=1, gcs_endpoint=gcs_endpoint).address)
    first = client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"], "--sleep", "60"))
    second = client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"], "--sleep", "60"))
    pid_file = _job_dir(tmp_path / "state", first) / "trainer.pid"
    _wait(client, first.name, until=lambda job: job.state == JobState.JOB_STATE_RUNNING and pid_file.exists())
    assert client.get_custom_job(name=second.name).state == JobState.JOB_STATE_QUEUED

    client.cancel_custom_job(name=first.name)
    cancelled = _wait(client, first.name)
    assert cancelled.state == JobState.JOB_STATE_CANCELLED
    _wait_dead(int(pid_file.read_text()))
    _wait(client, second.name, until=lambda job: job.state == JobState.JOB_STATE_RUNNING)
    client.cancel_custom_job(name=second.name)
    assert _wait(client, second.name).state == JobState.JOB_STATE_CANCELLED


@pytest.mark.emulator
def test_cancelling_a_queued_job_never_runs_it(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    client = _client(start(max_concurrent=1, gcs_endpoint=gcs_endpoint).address)
    running = client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"], "--sleep", "60"))
    queued = client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"]))
    client.cancel_custom_job(name=queued.name)
    assert client.get_custom_job(name=queued.name).state == JobState.JOB_STATE_CANCELLED
    client.cancel_custom_job(name=running.name)
    assert _wait(client, running.name).state == JobState.JOB_STATE_CANCELLED
    assert not (_job_dir(tmp_path / "state", queued) / "trainer.pid").exists()


@pytest.mark.emulator
def test_processes_left_behind_by_a_trainer_are_killed(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    job = _wait(
        client, client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"], "--spawn")).name
    )
    assert job.state == JobState.JOB_STATE_SUCCEEDED, job.error.message
    _wait_dead(int((_job_dir(tmp_path / "state", job) / "grandchild.pid").read_text()))


@pytest.mark.emulator
def test_sigterm_cancels_running_jobs_and_kills_their_trainers(
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    port = _free_port()
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "local_emulator.vertex", "--port", str(port), "--state-dir", str(state)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "STORAGE_EMULATOR_HOST": gcs_endpoint},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        client = aiplatform_v1.JobServiceClient(transport=JobServiceGrpcTransport(channel=channel))
        job = client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["sdist"], "--sleep", "60"))
        pid_file = _job_dir(state, job) / "trainer.pid"
        _wait(client, job.name, until=lambda j: j.state == JobState.JOB_STATE_RUNNING and pid_file.exists())
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    _wait_dead(int(pid_file.read_text()))
    record = json.loads((state / "customJobs" / f"{job.name.rsplit('/', 1)[1]}.json").read_text())
    assert record["state"] == "JOB_STATE_CANCELLED"
    assert "shut down" in record["error"]["message"]


@pytest.mark.emulator
def test_the_trainer_sees_only_what_vertex_sets_and_what_its_package_declares(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    gcs: StorageClient,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    """Vertex pip-installs the package into the executor image: nothing of the stack's interpreter or
    environment reaches the trainer (https://cloud.google.com/vertex-ai/docs/training/create-python-pre-built-container).
    """
    server = start(gcs_endpoint=gcs_endpoint, PYTHONPATH=str(REPO), CD4ML_LEAK="stack-only")
    client = _client(server.address)
    output = f"gs://{BUCKET}/runs/clean"
    # tomli is declared by the package (install_requires / Requires-Dist); sklearn comes with the image.
    job = client.create_custom_job(
        parent=PARENT,
        custom_job=_package_job(packages["sdist"], "--import", "tomli", "--import", "sklearn", output=output),
    )
    job = _wait(client, job.name, timeout_s=600)
    assert job.state == JobState.JOB_STATE_SUCCEEDED, job.error.message
    model = json.loads(gcs.bucket(BUCKET).blob("runs/clean/model/model.json").download_as_bytes())
    assert model["env"]["PYTHONPATH"] is None
    assert model["env"]["CD4ML_LEAK"] is None
    assert model["env"]["HOME"] == str(_job_dir(tmp_path / "state", job) / "home")
    assert not any(str(REPO) in entry for entry in model["path"])
    assert model["executable"].startswith(str(default_cache_dir() / "vertex-envs"))


@pytest.mark.emulator
def test_an_undeclared_dependency_fails_the_job_as_on_vertex(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
) -> None:
    """functions_framework is installed for the stack, but neither the image nor the package provides it."""
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    created = client.create_custom_job(
        parent=PARENT, custom_job=_package_job(packages["wheel"], "--import", "functions_framework")
    )
    job = _wait(client, created.name, timeout_s=600)
    assert job.state == JobState.JOB_STATE_FAILED
    assert "ModuleNotFoundError: No module named 'functions_framework'" in job.error.message


@pytest.mark.emulator
def test_the_environment_is_built_once_per_package_and_image(
    start: Callable[..., VertexServer],
    gcs_endpoint: str,
    packages: dict[str, str],
    tmp_path: Path,
) -> None:
    """Cached by the package's digest and the executor image: a second job reuses it without pip."""
    client = _client(start(gcs_endpoint=gcs_endpoint).address)
    first = _wait(
        client, client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["wheel"])).name, timeout_s=600
    )
    assert first.state == JobState.JOB_STATE_SUCCEEDED, first.error.message
    started = time.monotonic()
    second = _wait(client, client.create_custom_job(parent=PARENT, custom_job=_package_job(packages["wheel"])).name)
    assert second.state == JobState.JOB_STATE_SUCCEEDED, second.error.message
    assert time.monotonic() - started < 30
    assert not (_job_dir(tmp_path / "state", second) / "install.log").exists()  # written only by pip runs
