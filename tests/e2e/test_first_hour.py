"""A model team's first hour, as the README tells it: `model init` → `check` → `push` → `run` of each template (the
container one trains in an image of its own), an unchanged re-push that reuses the training cache, and a typo in a
model's name refused at once, from a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cd4ml import clients

#: A long flow: `nox -s e2e` runs it (CI does), the README's test command does not.
pytestmark = pytest.mark.flow

REPO = Path(__file__).resolve().parents[2]


def _cd4ml(
    pipeline: Any, *args: str, cwd: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it against the running stack (found through its state dir, no CD4ML_PROJECT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CD4ML_", "PUBSUB_", "FIRESTORE_", "STORAGE_"))}
    env.update(extra or {})
    env["CD4ML_STATE_DIR"] = str(pipeline.stack.root)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "functions"), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_each_template_runs_end_to_end_as_made_and_an_unchanged_push_reuses_the_training(
    pipeline: Any, tmp_path: Path
) -> None:
    runs = {}
    for template in ("sklearn-classifier", "sklearn-regressor", "container"):
        name = f"first-{template.removeprefix('sklearn-')}"
        made = _cd4ml(pipeline, "model", "init", name, "--template", template, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        checked = _cd4ml(pipeline, "model", "check", name, cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
        pushed = _cd4ml(pipeline, "model", "push", name, cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        assert f"model {name} pushed to the local stack" in pushed.stdout and "source data seeded" in pushed.stdout
        runs[name] = pipeline.request(name, cache=True)
    runs_done = {}
    for name, run_id in runs.items():
        run = runs_done[name] = pipeline.wait(run_id, timeout=400)
        assert run["status"] == "succeeded", (name, run.get("error"), run.get("rejected_messages"))
        assert run["promotion"]["alias"] == "champion"
    # The container template trained in the image `model push` built, pinned by digest, from the model's own repository
    job = clients.job_service_client(pipeline.settings).get_custom_job(
        name=runs_done["first-container"]["training"]["job"]
    )
    spec = job.job_spec.worker_pool_specs[0].container_spec
    repository = pipeline.settings.registry.replace("{model}", "first-container")
    assert spec.image_uri.startswith(f"{repository}/first-container-trainer@sha256:"), spec.image_uri
    assert list(spec.command) == ["python3", "-m", "trainer.task"]
    for name in ("first-classifier", "first-container"):  # the trainer image is not built again either
        again = _cd4ml(pipeline, "model", "push", name, cwd=tmp_path)  # nothing changed
        assert again.returncode == 0, again.stderr
        repeat = pipeline.wait(pipeline.request(name, pipeline.next_run_id(name), cache=True))
        assert repeat["cache"]["training"]["reused_from"] == runs[name], (name, repeat.get("cache"))
        assert repeat["status"] == "skipped"  # the same model as the champion: nothing new to deliver


def test_a_typo_in_the_model_name_is_refused_at_once_naming_the_model_meant(
    pipeline: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cd4ml_cli import main

    for key, value in pipeline.env.items():
        monkeypatch.setenv(key, value)
    started = time.monotonic()
    assert main.main(["run", "digts", "--wait"]) == 2
    assert time.monotonic() - started < 2.0
    assert (
        "no model 'digts' in gs://cd4ml-local-artifacts/manifests/: did you mean 'digits'?" in capsys.readouterr().err
    )


def test_data_upload_puts_a_folder_where_the_models_manifest_reads_its_data(pipeline: Any, tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    (data / "2026").mkdir(parents=True)
    (data / "2026" / "more.csv").write_text("a,target\n1,2\n")
    (data / "notes.csv").write_text("a,target\n3,4\n")
    bucket = pipeline.storage.bucket(pipeline.settings.data_bucket)
    try:
        uploaded = _cd4ml(pipeline, "data", "upload", "diabetes", str(data), cwd=tmp_path)
        assert uploaded.returncode == 0, uploaded.stderr
        assert "2 file(s) uploaded to gs://cd4ml-local-data/sources/diabetes/" in uploaded.stderr
        assert bucket.blob("sources/diabetes/2026/more.csv").download_as_text() == "a,target\n1,2\n"
        unknown = _cd4ml(pipeline, "data", "upload", "diabets", str(data), cwd=tmp_path)
        assert unknown.returncode == 2 and "did you mean 'diabetes'?" in unknown.stderr
    finally:
        for name in ("sources/diabetes/2026/more.csv", "sources/diabetes/notes.csv"):
            blob = bucket.blob(name)
            if blob.exists():
                blob.delete()  # the diabetes example's runs read this prefix


#: Modules whose import alone takes seconds on a busy machine (gRPC, protobuf, the Cloud clients): a refusal needs none.
_HEAVY = ("grpc", "google.protobuf", "google.api_core", "google.cloud")


def test_a_fresh_process_refuses_an_unknown_model_in_under_two_seconds_in_one_line(
    pipeline: Any, tmp_path: Path
) -> None:
    """`cd4ml run TYPO` as a user types it: a new process, which finds the running stack through its state dir.

    The machine these tests run on is shared with other builds (load averages of 20 on 2 cores are common), where a
    process may wait a second for a core while doing nothing; so the two-second bound is held by the best of three
    attempts, and what keeps the command fast however busy the machine is, that it imports no client library before
    it refuses, is checked from the interpreter's own import log (``PYTHONPROFILEIMPORTTIME``, as ``-X importtime``).
    Before, the refusal imported google.cloud.storage, gRPC and protobuf: 2-5 s at a load of 20, 0.6 s of CPU.
    """
    walls = []
    for _ in range(3):
        started = time.monotonic()
        refused = _cd4ml(pipeline, "run", "nosuchmodel", cwd=tmp_path)
        walls.append(time.monotonic() - started)
        assert refused.returncode == 2, refused.stderr
        line = refused.stderr.strip()
        assert "\n" not in line and "Traceback" not in line, line
        assert line.startswith("cd4ml: no model 'nosuchmodel' in gs://cd4ml-local-artifacts/manifests/"), line
        assert "(known: " in line and "`cd4ml model push FOLDER`" in line, line  # the models there, and the fix
        assert refused.stdout == ""
    assert min(walls) < 2.0, walls
    profiled = _cd4ml(pipeline, "run", "nosuchmodel", cwd=tmp_path, extra={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = [row.split("|")[-1].strip() for row in profiled.stderr.splitlines() if row.startswith("import time:")]
    assert "cd4ml_cli.main" in imported and profiled.returncode == 2
    assert [m for m in imported if m.startswith(_HEAVY)] == []
