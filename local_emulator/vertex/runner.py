"""Runs one CustomJob of the local Vertex AI stand-in: fetch the trainer, install it cleanly, run it.

python_package_spec: Vertex pip-installs the packages into the executor image and runs
``python -m python_module *args``. Here the packages are downloaded from GCS and pip-installed into
a clean cached virtual environment standing in for the image (``envs``: the image's
framework pins from ``images`` plus what the package declares, nothing from the stack's
interpreter), and the module runs with that environment's interpreter, in its own process group.

container_spec: an image of the local registry runs in that image (``local_emulator.containers``:
buildah, chroot isolation, host network); CreateCustomJob refuses every other image beforehand.

Either way the trainer's environment is only what Vertex sets (``AIP_*`` from
``CustomJobSpec.base_output_directory``, ``CLOUD_ML_*``, ``CLUSTER_SPEC``, ``TF_CONFIG``), the spec's
``env``, a minimal process environment (PATH, HOME, LANG) and ``STORAGE_EMULATOR_HOST``, the
documented client setting that points Cloud Storage clients at the local emulator; never the
stack's ``CD4ML_*`` or ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from google.cloud import aiplatform_v1
from google.rpc import code_pb2

from local_emulator.common.service import kill_process_group
from local_emulator.vertex.envs import InstallFailed, trainer_env
from local_emulator.vertex.images import executor_image
from local_emulator.vertex.job import JobContext, JobState, Outcome, cancelled, seconds, stderr_tail

_log = logging.getLogger("local_emulator.vertex")

_POLL_S = 0.1
_KILL_GRACE_S = 5.0
_PACKAGE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".whl")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Passed through from the server's environment: the documented Cloud Storage client setting that
# reaches the local emulator (in production the metadata server and real endpoints play this role).
_PASSED_THROUGH = ("STORAGE_EMULATOR_HOST",)


class _RunFailed(Exception):
    """A step before the trainer failed; carries the Outcome to report."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def _failed(code: int, message: str) -> _RunFailed:
    return _RunFailed(Outcome(JobState.JOB_STATE_FAILED, code, message))


def run_job(ctx: JobContext, cancel: threading.Event, on_running: Callable[[], None]) -> Outcome:
    """Run the job's primary replica to completion, cancellation or timeout; never raises for job errors."""
    try:
        pool = _primary_pool(ctx.job)
        ctx.job_dir.mkdir(parents=True, exist_ok=True)
        if "container_spec" in pool:
            from local_emulator.vertex.container import run_container

            spec = pool.container_spec
            env = trainer_environment(ctx, {var.name: var.value for var in spec.env})
            return run_container(ctx, spec, env, cancel, on_running)
        package_spec = pool.python_package_spec
        packages = _download(ctx, list(package_spec.package_uris))
        if cancel.is_set():
            return cancelled()
        try:
            venv = trainer_env(
                ctx.cache_dir,
                executor_image(package_spec.executor_image_uri),
                packages,
                log=ctx.job_dir / "install.log",
                environ=ctx.base_env,
            )
        except InstallFailed as exc:
            raise _failed(
                code_pb2.INVALID_ARGUMENT,
                f"Installing the Python package into {package_spec.executor_image_uri} failed: {exc}",
            ) from exc
        if cancel.is_set():
            return cancelled()
        env = trainer_environment(ctx, {var.name: var.value for var in package_spec.env}, venv.python.parent)
        command = [str(venv.python), "-m", package_spec.python_module, *package_spec.args]
        return _run_trainer(ctx, command, env, cancel, on_running)
    except _RunFailed as failed:
        return failed.outcome


def _primary_pool(job: aiplatform_v1.CustomJob) -> aiplatform_v1.WorkerPoolSpec:
    pools = list(job.job_spec.worker_pool_specs)
    extra = [i for i, p in enumerate(pools[1:], start=1) if p.replica_count > 0]
    if extra:
        raise _failed(
            code_pb2.UNIMPLEMENTED,
            "distributed jobs (worker pools after the first) are not supported by the local "
            f"Vertex AI stand-in; worker_pool_specs{extra} have replicas",
        )
    return pools[0]


def _download(ctx: JobContext, uris: list[str]) -> list[Path]:
    """Copy each gs:// package into JOBDIR/packages/INDEX/, keeping its file name."""
    from google.api_core import exceptions as gexc  # only jobs need the GCS client
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    emulator = ctx.base_env.get("STORAGE_EMULATOR_HOST")
    client = (
        Client(
            project=ctx.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": emulator},
        )
        if emulator
        else Client(project=ctx.project)
    )
    target = ctx.job_dir / "packages"
    target.mkdir(exist_ok=True)
    paths = []
    for index, uri in enumerate(uris):
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if not name.endswith(_PACKAGE_SUFFIXES):
            raise _failed(
                code_pb2.INVALID_ARGUMENT,
                f"Unsupported Python package {uri}: expected a source distribution or wheel "
                f"({', '.join(_PACKAGE_SUFFIXES)})",
            )
        path = target / str(index) / Path(name).name  # pip reads the wheel tags from the file name
        path.parent.mkdir(exist_ok=True)
        try:
            client.bucket(bucket).blob(name).download_to_filename(str(path))
        except gexc.NotFound as exc:
            raise _RunFailed(
                Outcome(
                    JobState.JOB_STATE_FAILED,
                    code_pb2.INVALID_ARGUMENT,
                    f"The Python package {uri} does not exist: {exc.message}",
                )
            ) from exc
        except gexc.GoogleAPIError as exc:
            raise _RunFailed(
                Outcome(
                    JobState.JOB_STATE_FAILED, code_pb2.INTERNAL, f"Downloading the Python package {uri} failed: {exc}"
                )
            ) from exc
        paths.append(path)
    return paths


def trainer_environment(ctx: JobContext, spec_env: Mapping[str, str], bin_dir: Path | None = None) -> dict[str, str]:
    """The replica's whole environment: a bare process environment, what Vertex sets, the spec's env."""
    env = {
        "PATH": f"{bin_dir}:{_PATH}" if bin_dir else _PATH,
        "HOME": str(_home(ctx.job_dir)),
        "LANG": "C.UTF-8",
    }
    env.update({name: ctx.base_env[name] for name in _PASSED_THROUGH if ctx.base_env.get(name)})
    output = ctx.job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
    if output:  # documented on CustomJobSpec.base_output_directory (google/cloud/aiplatform/v1/custom_job.proto)
        env["AIP_MODEL_DIR"] = f"{output}/model/"
        env["AIP_CHECKPOINT_DIR"] = f"{output}/checkpoints/"
        env["AIP_TENSORBOARD_LOG_DIR"] = f"{output}/logs/"
    env["CLOUD_ML_PROJECT_ID"] = ctx.project
    env["CLOUD_ML_REGION"] = ctx.location
    env["CLOUD_ML_JOB_ID"] = ctx.job_id
    job_spec_json = aiplatform_v1.CustomJobSpec.to_json(ctx.job.job_spec, indent=None)
    cluster = {"workerpool0": ["localhost:2222"]}
    # CLUSTER_SPEC and TF_CONFIG: https://cloud.google.com/vertex-ai/docs/training/distributed-training
    env["CLUSTER_SPEC"] = json.dumps(
        {"cluster": cluster, "environment": "cloud", "task": {"type": "workerpool0", "index": 0}, "job": job_spec_json}
    )
    env["TF_CONFIG"] = json.dumps(
        {
            "cluster": {"chief": cluster["workerpool0"]},
            "environment": "cloud",
            "task": {"type": "chief", "index": 0},
            "job": job_spec_json,
        }
    )
    env.update(spec_env)
    return env


def _home(job_dir: Path) -> Path:
    home = job_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def _run_trainer(
    ctx: JobContext,
    command: list[str],
    env: dict[str, str],
    cancel: threading.Event,
    on_running: Callable[[], None],
) -> Outcome:
    timeout = seconds(ctx.job.job_spec.scheduling.timeout)
    stdout_path, stderr_path = ctx.job_dir / "stdout.log", ctx.job_dir / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = subprocess.Popen(
            command,
            cwd=ctx.job_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    _log.info("trainer started", extra={"job_id": ctx.job_id, "pid": process.pid})
    on_running()
    deadline = time.monotonic() + timeout if timeout else None
    stopped_by = ""
    while process.poll() is None:
        if cancel.wait(_POLL_S):
            stopped_by = "cancel"
        elif deadline is not None and time.monotonic() >= deadline:
            stopped_by = "timeout"
        if stopped_by:
            break
    kill_process_group(process, grace_seconds=_KILL_GRACE_S)
    process.wait()
    if stopped_by == "cancel":
        return cancelled()
    if stopped_by == "timeout":
        return Outcome(
            JobState.JOB_STATE_FAILED,
            code_pb2.DEADLINE_EXCEEDED,
            f"The job exceeded its timeout of {timeout:g} s (job_spec.scheduling.timeout) and was "
            f"stopped.{stderr_tail(stderr_path)}",
        )
    if process.returncode == 0:
        return Outcome(JobState.JOB_STATE_SUCCEEDED)
    status = (
        f"was terminated by signal {-process.returncode}"
        if process.returncode < 0
        else f"exited with a non-zero status of {process.returncode}"
    )
    return Outcome(
        JobState.JOB_STATE_FAILED,
        code_pb2.INVALID_ARGUMENT,
        f"The replica workerpool0-0 {status}. Logs: {stderr_path}.{stderr_tail(stderr_path)}",
    )
