"""A model team's first hour, as the README tells it: `model init` → `check` → `push` → `run` of each template, an
unchanged re-push that reuses the training cache, and a typo in a model's name refused at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _cd4ml(pipeline: Any, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it against the running stack (found through its state dir, no CD4ML_PROJECT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CD4ML_", "PUBSUB_", "FIRESTORE_", "STORAGE_"))}
    env["CD4ML_STATE_DIR"] = str(pipeline.stack.root)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "functions"), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def test_each_template_runs_end_to_end_as_made_and_an_unchanged_push_reuses_the_training(
    pipeline: Any, tmp_path: Path
) -> None:
    runs = {}
    for template in ("sklearn-classifier", "sklearn-regressor"):
        name = f"first-{template.removeprefix('sklearn-')}"
        made = _cd4ml(pipeline, "model", "init", name, "--template", template, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        checked = _cd4ml(pipeline, "model", "check", name, cwd=tmp_path)
        assert checked.returncode == 0, checked.stderr
        pushed = _cd4ml(pipeline, "model", "push", name, cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        assert f"model {name} pushed to the local stack" in pushed.stdout and "source data seeded" in pushed.stdout
        runs[name] = pipeline.request(name, cache=True)
    for name, run_id in runs.items():
        run = pipeline.wait(run_id, timeout=400)
        assert run["status"] == "succeeded", (name, run.get("error"), run.get("rejected_messages"))
        assert run["promotion"]["alias"] == "champion"
    again = _cd4ml(pipeline, "model", "push", "first-classifier", cwd=tmp_path)  # nothing changed
    assert again.returncode == 0, again.stderr
    repeat = pipeline.wait(pipeline.request("first-classifier", pipeline.next_run_id("first-classifier"), cache=True))
    assert repeat["cache"]["training"]["reused_from"] == runs["first-classifier"]
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
