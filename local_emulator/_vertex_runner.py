"""Runs one CustomJob of the local Vertex AI stand-in: fetch the trainer package, install it, run it.

Installing: Vertex pip-installs the package into its executor image. Here a wheel is unpacked into
``JOBDIR/site`` and an sdist (tar.gz, tgz or zip) is extracted with its root (and its ``src/``, if
any) put on ``PYTHONPATH``. Measured: ``pip install --no-deps --no-index --target`` cannot build an
sdist on this machine (the ``wheel`` package is absent and ``--no-index`` forbids fetching it), and
with an index it takes ~4.1 s for a one-file package; extraction takes milliseconds and needs no
network. Dependencies are never installed.

The one deviation from Vertex: the executor image is not run. The trainer runs as
``sys.executable -m python_module *args`` with the stand-in's own interpreter (which has
scikit-learn, joblib and google-cloud-storage), in its own process group, with the environment
Vertex sets. ``container_spec`` jobs cannot run at all and fail with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from google.cloud import aiplatform_v1
from google.rpc import code_pb2

_log = logging.getLogger("local_emulator.vertex")

CONTAINER_UNSUPPORTED = "container_spec jobs are not supported by the local Vertex AI stand-in; use python_package_spec"
STDERR_TAIL_LINES = 20
_POLL_S = 0.1
_KILL_GRACE_S = 5.0
_TAIL_BYTES = 64 * 1024

JobState = aiplatform_v1.JobState


@dataclass(frozen=True)
class JobContext:
    """What a run needs to know about its job and its surroundings."""

    job_id: str
    project: str
    location: str
    job_dir: Path
    job: aiplatform_v1.CustomJob
    base_env: Mapping[str, str]
    """The environment the trainer inherits (the server's, so STORAGE_EMULATOR_HOST passes through)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: a terminal state and, unless it succeeded, a google.rpc code and message."""

    state: int
    """A terminal ``aiplatform_v1.JobState``."""
    code: int = code_pb2.OK
    message: str = ""


class _RunFailed(Exception):
    """A step before the trainer failed; carries the Outcome to report."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


def run_job(ctx: JobContext, cancel: threading.Event, on_running: Callable[[], None]) -> Outcome:
    """Run the job's primary replica to completion, cancellation or timeout; never raises for job errors."""
    try:
        pool = _primary_pool(ctx.job)
        spec = pool.python_package_spec
        ctx.job_dir.mkdir(parents=True, exist_ok=True)
        packages = _download(ctx, list(spec.package_uris))
        paths = _install(packages, ctx.job_dir)
        if cancel.is_set():
            return _cancelled()
        env = trainer_environment(ctx, pool, paths)
        command = [sys.executable, "-m", spec.python_module, *spec.args]
        return _run_trainer(ctx, command, env, cancel, on_running)
    except _RunFailed as failed:
        return failed.outcome


def _primary_pool(job: aiplatform_v1.CustomJob) -> aiplatform_v1.WorkerPoolSpec:
    pools = list(job.job_spec.worker_pool_specs)
    extra = [i for i, p in enumerate(pools[1:], start=1) if p.replica_count > 0]
    if extra:
        raise _RunFailed(
            Outcome(
                JobState.JOB_STATE_FAILED,
                code_pb2.UNIMPLEMENTED,
                "distributed jobs (worker pools after the first) are not supported by the local "
                f"Vertex AI stand-in; worker_pool_specs{extra} have replicas",
            )
        )
    if "container_spec" in pools[0]:
        raise _RunFailed(Outcome(JobState.JOB_STATE_FAILED, code_pb2.UNIMPLEMENTED, CONTAINER_UNSUPPORTED))
    return pools[0]


def _download(ctx: JobContext, uris: list[str]) -> list[Path]:
    """Copy each gs:// package into JOBDIR/packages, keeping its file name."""
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
        path = target / f"{index}-{Path(name).name}"
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


def _install(packages: list[Path], job_dir: Path) -> list[Path]:
    """Make each package importable; return the directories to put on PYTHONPATH, in order."""
    site = job_dir / "site"
    site.mkdir(exist_ok=True)
    paths = [site]
    for index, package in enumerate(packages):
        name = package.name.split("-", 1)[1]
        try:
            if name.endswith(".whl"):
                with zipfile.ZipFile(package) as wheel:
                    wheel.extractall(site)
            elif name.endswith((".tar.gz", ".tgz", ".zip")):
                paths.extend(_extract_sdist(package, job_dir / "src" / str(index)))
            else:
                raise _RunFailed(
                    Outcome(
                        JobState.JOB_STATE_FAILED,
                        code_pb2.INVALID_ARGUMENT,
                        f"Unsupported Python package {name!r}: expected a .tar.gz, .tgz, .zip or .whl",
                    )
                )
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as exc:
            raise _RunFailed(
                Outcome(
                    JobState.JOB_STATE_FAILED,
                    code_pb2.INVALID_ARGUMENT,
                    f"Installing the Python package {name!r} failed: {exc}",
                )
            ) from exc
    return paths


def _extract_sdist(package: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    if package.name.endswith(".zip"):
        with zipfile.ZipFile(package) as archive:
            archive.extractall(target)
    else:
        with tarfile.open(package) as archive:
            archive.extractall(target, filter="data")
    entries = list(target.iterdir())
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else target
    return [root, root / "src"] if (root / "src").is_dir() else [root]


def trainer_environment(ctx: JobContext, pool: aiplatform_v1.WorkerPoolSpec, python_path: list[Path]) -> dict[str, str]:
    """The trainer's environment: the server's, plus what Vertex sets, plus the spec's env vars."""
    env = dict(ctx.base_env)
    output = ctx.job.job_spec.base_output_directory.output_uri_prefix.rstrip("/")
    if output:
        env["AIP_MODEL_DIR"] = f"{output}/model/"
        env["AIP_CHECKPOINT_DIR"] = f"{output}/checkpoints/"
        env["AIP_TENSORBOARD_LOG_DIR"] = f"{output}/logs/"
    env["CLOUD_ML_PROJECT_ID"] = ctx.project
    env["CLOUD_ML_REGION"] = ctx.location
    env["CLOUD_ML_JOB_ID"] = ctx.job_id
    job_spec_json = aiplatform_v1.CustomJobSpec.to_json(ctx.job.job_spec, indent=None)
    cluster = {"workerpool0": ["localhost:2222"]}
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
    inherited = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    env["PYTHONPATH"] = os.pathsep.join([*map(str, python_path), *inherited])
    env.setdefault("PYTHONUNBUFFERED", "1")
    for var in pool.python_package_spec.env:
        env[var.name] = var.value
    return env


def _run_trainer(
    ctx: JobContext,
    command: list[str],
    env: dict[str, str],
    cancel: threading.Event,
    on_running: Callable[[], None],
) -> Outcome:
    timeout = _seconds(ctx.job.job_spec.scheduling.timeout)
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
    kill_process_group(process)
    if stopped_by == "cancel":
        return _cancelled()
    if stopped_by == "timeout":
        return Outcome(
            JobState.JOB_STATE_FAILED,
            code_pb2.DEADLINE_EXCEEDED,
            f"The job exceeded its timeout of {timeout:g} s (job_spec.scheduling.timeout) and was "
            f"stopped.{_stderr_tail(stderr_path)}",
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
        f"The replica workerpool0-0 {status}. Logs: {stderr_path}.{_stderr_tail(stderr_path)}",
    )


def kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the trainer and everything it started: SIGTERM to its group, SIGKILL after a grace period."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(_KILL_GRACE_S)
    _signal_group(process.pid, signal.SIGKILL)  # also whatever the trainer left behind
    process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, sig)


def _cancelled() -> Outcome:
    return Outcome(JobState.JOB_STATE_CANCELLED, code_pb2.CANCELLED, "The job was cancelled.")


def _seconds(value: object) -> float:
    """Seconds of a proto Duration field (proto-plus hands out a timedelta); 0 means unset."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    seconds = getattr(value, "seconds", 0)
    nanos = getattr(value, "nanos", 0)
    return float(seconds) + float(nanos) / 1e9


def _stderr_tail(path: Path) -> str:
    """The last lines of the trainer's stderr, as a suffix for an error message."""
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            lines = stream.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    tail = lines[-STDERR_TAIL_LINES:]
    if not tail:
        return ""
    return f"\nLast {len(tail)} lines of stderr:\n" + "\n".join(tail)
