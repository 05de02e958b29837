"""`cd4ml local up | env | down` as a user runs them: ready when up, once only, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from local_emulator import processes

REPO = Path(__file__).resolve().parents[2]


def _cd4ml(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CD4ML_", "PUBSUB_", "FIRESTORE_", "STORAGE_"))}
    env["CD4ML_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=400
    )


def test_up_env_second_up_and_down_leave_no_process_behind(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = _cd4ml("local", "up", state=state)
    assert up.returncode == 0, up.stderr
    pids = json.loads((state / "stack.json").read_text())["pids"]
    try:
        endpoints = json.loads(_cd4ml("local", "env", "--json", state=state).stdout)
        assert {"pubsub", "firestore", "storage", "vertex", "registry", "cloudbuild", "gate", "ui"} <= endpoints.keys()
        assert f"web view (cd4ml ui): {endpoints['ui']}" in up.stderr  # up prints where to look
        assert "ui" in pids  # the web view is stopped by pid with the rest
        exports = _cd4ml("local", "env", state=state).stdout
        assert f"export PUBSUB_EMULATOR_HOST={endpoints['pubsub']}" in exports
        again = _cd4ml("local", "up", state=state)
        assert again.returncode == 0 and "already running" in again.stderr
        assert json.loads((state / "stack.json").read_text())["pids"] == pids  # nothing started twice
    finally:
        down = _cd4ml("local", "down", state=state)
    assert down.returncode == 0, down.stderr
    assert not (state / "stack.json").exists()
    left = [name for name, pid in pids.items() if processes.alive(pid)]
    assert left == []
    groups = {int(pid) for pid in pids.values()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            assert not (int(fields[2]) in groups and fields[0] != "Z"), f"process {entry.name} of the stack survived"
