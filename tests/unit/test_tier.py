"""The unit tier's own rule: no test in it can start a process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.unit.conftest import SpawnedProcess


def test_starting_a_process_fails_a_unit_test() -> None:
    with pytest.raises(SpawnedProcess):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(SpawnedProcess):
        os.system("true")
