"""Runs a container_spec CustomJob of the local Vertex AI stand-in in its image, from the local registry.

Vertex AI runs ``container_spec.image_uri`` with ``command`` replacing the image's ENTRYPOINT and
``args`` its CMD (https://cloud.google.com/vertex-ai/docs/training/configure-container-settings).
Here ``local_emulator.containers`` pulls the image from the local registry and runs it with buildah
(chroot isolation, host network). CreateCustomJob has already refused images outside that registry.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from google.cloud import aiplatform_v1
from google.rpc import code_pb2

from local_emulator.vertex.job import JobContext, Outcome, cancelled, seconds, stderr_tail

_log = logging.getLogger("local_emulator.vertex")
_POLL_S = 0.2
JobState = aiplatform_v1.JobState
#: The stack's access-token key (``local_emulator.iam.access_tokens``), set by ``cd4ml local up`` for this stand-in.
TOKEN_KEY_ENV = "LOCAL_TOKEN_KEY"


def service_agent_creds() -> str | None:
    """Vertex AI pulls a job's image as its service agent, not as the job's account (the Custom Code Service Agent
    reads the project's repositories); locally: an unrestricted token when the registry has token auth
    (``LOCAL_TOKEN_KEY``, the stack's access-token key)."""
    key = os.environ.get(TOKEN_KEY_ENV)
    if not key:
        return None
    from local_emulator.iam import policy as iam_policy
    from local_emulator.iam.access_tokens import Minter

    return f"oauth2accesstoken:{Minter.from_file(Path(key)).mint(iam_policy.ADMIN)}"


def run_container(
    ctx: JobContext,
    spec: aiplatform_v1.ContainerSpec,
    env: Mapping[str, str],
    cancel: threading.Event,
    on_running: Callable[[], None],
) -> Outcome:
    """Run the image to completion, cancellation or timeout; never raises for job errors."""
    try:  # written by another module's owner; imported by name so this file stands without it
        containers: Any = importlib.import_module("local_emulator.containers")
    except ImportError:
        return Outcome(
            JobState.JOB_STATE_FAILED,
            code_pb2.UNIMPLEMENTED,
            "container_spec jobs need local_emulator.containers, which this checkout does not have yet.",
        )
    # command replaces the ENTRYPOINT (and so the CMD too); args alone replace the CMD, after the ENTRYPOINT.
    argv = [*spec.command, *spec.args] if list(spec.command) else None
    cmd_args = list(spec.args) if not list(spec.command) and list(spec.args) else None
    log = ctx.job_dir / "container.log"
    try:
        # The stand-in's state dir, so pulled images are kept for the next job (STATE_DIR/containers).
        state_dir = ctx.job_dir.parent.parent
        container = containers.start(
            spec.image_uri, argv, dict(env), state_dir=state_dir, log=log, creds=service_agent_creds(), args=cmd_args
        )
    except Exception as exc:  # a pull or start failure is the job's failure, as on Vertex
        _log.warning("container did not start", extra={"job_id": ctx.job_id, "error": str(exc)})
        return Outcome(
            JobState.JOB_STATE_FAILED,
            code_pb2.INVALID_ARGUMENT,
            f"The image {spec.image_uri} could not be pulled or started: {exc}",
        )
    _log.info("container started", extra={"job_id": ctx.job_id, "pid": container.pid})
    on_running()
    timeout = seconds(ctx.job.job_spec.scheduling.timeout)
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        try:
            status = container.wait(_POLL_S)
            break
        except (subprocess.TimeoutExpired, TimeoutError):
            pass
        if cancel.is_set():
            container.stop()
            return cancelled()
        if deadline is not None and time.monotonic() >= deadline:
            container.stop()
            return Outcome(
                JobState.JOB_STATE_FAILED,
                code_pb2.DEADLINE_EXCEEDED,
                f"The job exceeded its timeout of {timeout:g} s (job_spec.scheduling.timeout) and was "
                f"stopped.{stderr_tail(log)}",
            )
    container.stop()  # removes the working container
    if status == 0:
        return Outcome(JobState.JOB_STATE_SUCCEEDED)
    return Outcome(
        JobState.JOB_STATE_FAILED,
        code_pb2.INVALID_ARGUMENT,
        f"The replica workerpool0-0 exited with a non-zero status of {status}. Logs: {log}.{stderr_tail(log)}",
    )
