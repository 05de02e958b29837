"""`cd4ml local up | env | down` as a user runs them: ready when up, once only, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from local_emulator.common import processes

#: A long flow: `nox -s e2e` runs it (CI does), the README's test command does not.
pytestmark = pytest.mark.flow

REPO = Path(__file__).resolve().parents[2]


def _cd4ml(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CD4ML_", "PUBSUB_", "FIRESTORE_", "STORAGE_"))}
    env["CD4ML_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "cd4ml_cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=700
    )


def _survivors(pids: dict[str, int]) -> list[str]:
    """Processes of the stack's process groups still alive (zombies aside)."""
    left = [f"{name} ({pid})" for name, pid in pids.items() if processes.alive(pid)]
    groups = {int(pid) for pid in pids.values()}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().split(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) in groups and fields[0] != "Z":
                left.append(f"process {entry.name} of group {fields[2]}")
    return left


def test_up_run_down_three_times_in_one_checkout_each_run_succeeds_and_nothing_survives(tmp_path: Path) -> None:
    """down then up in the same checkout used to leave the push relay on the first stack's ports: no run started."""
    state = tmp_path / "state"
    for cycle in range(3):
        up = _cd4ml("local", "up", state=state)
        assert up.returncode == 0, up.stderr
        pids = json.loads((state / "stack.json").read_text())["pids"]
        try:
            endpoints = json.loads(_cd4ml("local", "env", "--json", state=state).stdout)
            if cycle == 0:
                assert {
                    "pubsub",
                    "firestore",
                    "storage",
                    "vertex",
                    "registry",
                    "cloudbuild",
                    "gate",
                    "ui",
                } <= endpoints.keys()
                assert f"web view (cd4ml ui): {endpoints['ui']}" in up.stderr  # up prints where to look
                assert "ui" in pids  # the web view is stopped by pid with the rest
                exports = _cd4ml("local", "env", state=state).stdout
                assert f"export PUBSUB_EMULATOR_HOST={endpoints['pubsub']}" in exports
                again = _cd4ml("local", "up", state=state)
                assert again.returncode == 0 and "already running" in again.stderr
                assert json.loads((state / "stack.json").read_text())["pids"] == pids  # nothing started twice
            routes = json.loads((state / "pubsub-push.json").read_text())
            assert len(routes) == len({r["subscription"] for r in routes})  # one route per subscription
            assert {r["endpoint"].split("/projects/")[0] for r in routes} <= set(endpoints["functions"].values())
            # diabetes: its image needs no pip install, so each cycle's full run (nothing is cached across a restart)
            # costs seconds of build instead of digits' ~20
            run = _cd4ml("run", "diabetes", "--wait", "--timeout", "600", state=state)
            assert run.returncode == 0, f"cycle {cycle + 1}: {run.stdout[-2000:]} {run.stderr[-2000:]}"
            assert "model.promoted" in run.stdout
        finally:
            down = _cd4ml("local", "down", state=state)
        assert down.returncode == 0, down.stderr
        assert not (state / "stack.json").exists()
        assert _survivors(pids) == [], f"cycle {cycle + 1}"
