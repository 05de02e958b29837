"""The unit tier spawns no process: stage handlers run against the in-memory ledger (tests/stagekit.py); the
stand-ins, which start real servers and tools, are tested under tests/standins."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import croniter  # noqa: F401  # its import asks platform.architecture(), which runs file(1): done here, before the guard
import pytest


class SpawnedProcess(AssertionError):
    """A unit test tried to start a process."""


@pytest.fixture(autouse=True)
def no_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any unit test that starts a process (subprocess, os.fork/exec/spawn, multiprocessing)."""
    import os

    def refuse(*args: Any, **kwargs: Any) -> Any:
        command = next((a for a in args if isinstance(a, (list, tuple, str, bytes))), "?")
        raise SpawnedProcess(f"a unit test started a process ({command!r}): it belongs in tests/standins or above")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    for name in ("fork", "forkpty", "execv", "execve", "execvp", "execvpe", "posix_spawn", "posix_spawnp", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    yield
