"""Fixtures: the local stack (started once per session, stopped by pid) and a contract-test project on it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under contract/, standins/ and e2e/ need emulators or tools: marked so `-m "not emulator"` runs the rest."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.emulator)
        if "contract" in parts or "standins" in parts:
            item.add_marker(pytest.mark.emulator)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The whole local stack, up for the session; every process is stopped by pid afterwards."""
    yield from _up(tmp_path_factory, functions=True)


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The emulators and stand-ins without the functions, the models or the scheduler (tests that call handlers
    in-process); the whole stack instead when this session also runs end-to-end tests (one stack, started once)."""
    if any("e2e" in Path(str(item.fspath)).parts for item in request.session.items):
        yield request.getfixturevalue("stack")
        return
    yield from _up(tmp_path_factory, functions=False)


def _up(tmp_path_factory: pytest.TempPathFactory, *, functions: bool) -> Iterator[object]:
    from local_emulator import stack as local

    state = tmp_path_factory.mktemp("cd4ml-state")
    previous = os.environ.get("CD4ML_STATE_DIR")
    os.environ["CD4ML_STATE_DIR"] = str(state)
    running = local.up(tick_seconds=1.0, say=lambda _: None, functions=functions)
    try:
        yield running
    finally:
        local.down(running, say=lambda _: None)
        if previous is None:
            os.environ.pop("CD4ML_STATE_DIR", None)
        else:
            os.environ["CD4ML_STATE_DIR"] = previous
        shutil.rmtree(state, ignore_errors=True)
