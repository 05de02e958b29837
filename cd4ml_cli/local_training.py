"""``cd4ml model train FOLDER --local``: the trainer run on this machine as Vertex AI runs it, to iterate on a model.

The same CustomJob submit_training makes (args, hyperparameters as ``--name=value``, the ``CD4ML_*`` job
environment), the package ``cd4ml model push`` uploads (models.sdist), installed in the local Vertex stand-in's
clean environment for the executor image (only what the package and the image provide), run with the
environment Vertex sets (``AIP_MODEL_DIR``, ``CLOUD_ML_*``, ``CLUSTER_SPEC``, ``TF_CONFIG``;
local_emulator/vertex/runner.trainer_environment). The data is a local snapshot: ``--data DIR``, or what the
folder's ``seed_data.py`` writes. AIP_MODEL_DIR is a local folder, so the trainer must write there as it does to
``gs://`` (the examples do).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cd4ml_models import folder as models

from cd4ml.errors import Cd4mlError


@dataclass(frozen=True)
class Trained:
    """What a local training left: the model folder, its metrics.json, the seconds it took."""

    model_dir: Path
    report: dict[str, Any]
    seconds: float


def snapshot(folder: Path, data: Path | None, into: Path) -> Path:
    """The local snapshot: ``data`` as given, else what the folder's seed_data.py writes into ``into``."""
    if data is not None:
        if not data.is_dir():
            raise Cd4mlError(f"--data {data}: not a folder; give a folder of the files the trainer reads")
        return data.resolve()
    seeder = folder / "seed_data.py"
    if not seeder.is_file():
        raise Cd4mlError(f"no data for {folder}: give --data DIR (the files the trainer reads), or add a seed_data.py")
    done = subprocess.run([sys.executable, str(seeder), str(into)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise Cd4mlError(f"{seeder} failed (exit {done.returncode}): {' '.join(done.stderr.split()[-30:])}")
    return into


def _dataset(path: Path) -> Any:
    from cd4ml.snapshot import Dataset

    files = sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    size = sum(f.stat().st_size for f in files)
    return Dataset(uri=str(path), sha256=digest.hexdigest(), rows=0, bytes=size, files=len(files))


def train(folder: Path, work: Path, data: Path | None = None) -> Trained:
    """Train the folder's model in ``work`` as Vertex would; Cd4mlError naming why it could not or did not."""
    from local_emulator.vertex.envs import InstallFailed, default_cache_dir, trainer_env
    from local_emulator.vertex.images import executor_image
    from local_emulator.vertex.job import JobContext
    from local_emulator.vertex.runner import trainer_environment

    from cd4ml.stages.training import custom_job

    manifest = models.check(folder)
    if not manifest.training.python_module or not (folder / "setup.py").is_file():
        raise Cd4mlError(
            f"{folder}: local training runs a Python package trainer (setup.py and python_package in the manifest); "
            "a container trainer runs with `docker run` and the same variables"
        )
    dataset = _dataset(snapshot(folder, data, work / "data"))
    package = work / "package" / "trainer-local.tar.gz"
    package.parent.mkdir(parents=True, exist_ok=True)
    package.write_bytes(models.sdist(folder, package.name))
    started = time.monotonic()
    try:
        env = trainer_env(
            default_cache_dir(),
            executor_image(manifest.training.executor_image),
            [package],
            log=work / "install.log",
            environ=os.environ,
        )
    except InstallFailed as failed:
        raise Cd4mlError(
            f"the trainer package does not install on {manifest.training.executor_image}: {failed}"
        ) from None
    ctx = SimpleNamespace(settings=SimpleNamespace(artifact_bucket="local", training_service_account=""))
    job = custom_job(ctx, f"{manifest.name}-local", manifest, dataset)  # type: ignore[arg-type]
    job.job_spec.base_output_directory.output_uri_prefix = str(work / "output")
    spec = job.job_spec.worker_pool_specs[0].python_package_spec
    job_dir = work / "job"
    job_dir.mkdir(parents=True, exist_ok=True)
    context = JobContext("local", "local", "local", job_dir, job, os.environ, default_cache_dir())
    variables = trainer_environment(context, {e.name: e.value for e in spec.env}, bin_dir=env.python.parent)
    done = subprocess.run(
        [str(env.python), "-m", spec.python_module, *spec.args],
        cwd=job_dir,
        env=variables,
        capture_output=True,
        text=True,
        timeout=manifest.training.timeout_seconds,
    )
    (job_dir / "stderr.log").write_text(done.stderr)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise Cd4mlError(
            f"the trainer exited with status {done.returncode}: {tail} (whole log: {job_dir / 'stderr.log'})"
        )
    model_dir = Path(variables["AIP_MODEL_DIR"])
    metrics = model_dir / "metrics.json"
    if not metrics.is_file():
        raise Cd4mlError(f"the trainer wrote no metrics.json to AIP_MODEL_DIR ({model_dir}); the gate needs it")
    return Trained(model_dir, json.loads(metrics.read_text()), time.monotonic() - started)


def command(folder: Path, data: Path | None, keep: Path | None) -> int:
    """Train, print the metrics (JSON on stdout) and what the gate would say without a champion."""
    from cd4ml.evaluation_gate import decide

    work = keep or Path(tempfile.mkdtemp(prefix="cd4ml-train-"))
    trained = train(folder, work, data)
    manifest = models.read(folder)
    decision = decide(trained.report.get("metrics") or {}, manifest.evaluation, None)
    files = sorted(p.name for p in trained.model_dir.iterdir())
    print(json.dumps(trained.report.get("metrics") or {}, indent=2))
    verdict = "would pass" if decision.passed else "would fail: " + "; ".join(decision.reasons)
    print(
        f"trained {manifest.name} in {trained.seconds:.1f} s; AIP_MODEL_DIR {trained.model_dir} ({', '.join(files)}); "
        f"the gate {verdict} (against no champion)",
        file=sys.stderr,
    )
    return 0
