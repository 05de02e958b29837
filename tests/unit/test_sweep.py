"""Tick stages run the stage's steps per run of one ledger query (runtime.sweep): one run's trouble is logged and
handed on without stopping the others; ended runs are left alone unless the stage follows them on purpose."""

from __future__ import annotations

import logging

import pytest
from google.api_core.exceptions import ServiceUnavailable

from cd4ml import runtime
from cd4ml.errors import RetryableError
from cd4ml.run import Run
from tests.stagekit import Kit

FIRST, SECOND, THIRD, ENDED = (f"digits-20300101t0{n}0000z" for n in range(4))


def _kit() -> Kit:
    kit = Kit("watch_canary")
    for run_id in (FIRST, SECOND, THIRD):
        kit.seed(run_id, canary={"active": True, "execution_id": run_id})
    kit.seed(ENDED, status="failed", canary={"active": True, "execution_id": ENDED})
    return kit


def test_one_runs_trouble_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    kit = _kit()
    seen: list[str] = []
    troubled: list[tuple[str, str]] = []

    def each(run: Run) -> None:
        seen.append(run.run_id)
        if run.run_id == FIRST:
            raise RetryableError("Gate unavailable")
        if run.run_id == SECOND:
            raise ServiceUnavailable("Firestore unavailable")  # type: ignore[no-untyped-call]

    kit.ctx.log = logging.getLogger("test_sweep")  # propagates to caplog, whatever the JSON log setup did
    with caplog.at_level(logging.WARNING, logger="test_sweep"):
        matched = runtime.sweep(
            kit.ctx,
            [("canary.active", "==", True)],
            each,
            doing="follow the canary",
            trouble=lambda run, problem: troubled.append((run.run_id, str(problem))),
        )
    assert matched == 4
    assert sorted(seen) == [FIRST, SECOND, THIRD]  # the ended run is left alone
    assert sorted(troubled) == [(FIRST, "Gate unavailable"), (SECOND, "503 Firestore unavailable")]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "could not follow the canary; next tick retries: Gate unavailable" in warned


def test_ended_runs_are_followed_when_the_stage_asks() -> None:
    kit = _kit()
    seen: list[str] = []
    runtime.sweep(
        kit.ctx, [("canary.active", "==", True)], lambda run: seen.append(run.run_id), doing="x", ended_too=True
    )
    assert sorted(seen) == [FIRST, SECOND, THIRD, ENDED]


def test_a_bug_is_not_swallowed_as_trouble() -> None:
    kit = _kit()

    def each(run: Run) -> None:
        raise KeyError("training")

    with pytest.raises(KeyError):
        runtime.sweep(kit.ctx, [("canary.active", "==", True)], each, doing="x")
    # ... unless the stage names it (watch_approvals: a run gone between the query and the decision)
    runtime.sweep(kit.ctx, [("canary.active", "==", True)], each, doing="x", also=(LookupError,))
