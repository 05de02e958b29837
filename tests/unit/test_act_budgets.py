"""Every act is bounded well under its function's timeout (catalog.yaml): a function the platform stops mid-act
stops its lease's heartbeat too, and a takeover then acts a second time.

"Well under" is half: the rest is the ledger's writes, the publish, and the platform's own start.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import requests

from cd4ml import catalog, clients, events, registry, spinnaker
from cd4ml.errors import RetryableError
from cd4ml.stages import notify
from tests.stagekit import Kit, event, manifest

DIGEST = "sha256:" + "a" * 64
RUN = "digits-20300101t030000z"


def _timeout(stage: str) -> float:
    return float(catalog.load().stage(stage).timeout_seconds)


#: Each stage's act and its declared worst case, in seconds: the budget its client spends at most.
ACTS: dict[str, float] = {
    "trigger_canary": spinnaker.budget(_timeout("trigger_canary")),  # recover + webhook + confirmation
    "watch_canary": spinnaker.budget(_timeout("watch_canary")),  # one budget for the whole tick
    "promote": registry.budget(_timeout("promote")),  # the alias check and move
    "submit_training": 2 * clients.CALL_SECONDS,  # recover (list jobs) + create the job
    "build_image": 2 * clients.CALL_SECONDS,  # recover (list builds) + create the build
}


@pytest.mark.parametrize("stage", sorted(ACTS))
def test_each_stages_act_budget_is_well_under_its_function_timeout(stage: str) -> None:
    assert ACTS[stage] <= _timeout(stage) / 2, f"{stage}: act up to {ACTS[stage]} s, timeout {_timeout(stage)} s"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Hanging(requests.Session):
    """Every call hangs for its whole connect and read timeout, then times out."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock
        self.calls = 0

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        connect, read = kwargs["timeout"]
        self.calls += 1
        self.clock.now += connect + read
        raise requests.ReadTimeout("hung")


def test_promotes_registry_calls_end_within_their_budget_when_every_call_hangs() -> None:
    clock = _Clock()
    session = _Hanging(clock)
    budget = registry.budget(_timeout("promote"))
    client = registry.RegistryClient(session=session, budget_seconds=budget, clock=clock)
    repo = registry.Repository.of("127.0.0.1:5000/cd4ml-digits/digits", "http://127.0.0.1:5000")
    start = clock.now
    # What ledger.once runs for a takeover of the promotion: recover (where is the alias?), then the move.
    for _ in range(3):
        with pytest.raises(RetryableError):
            client.digest(repo, "champion")
        with pytest.raises(RetryableError):
            client.tag(repo, DIGEST, "champion")
    assert clock.now - start <= budget < _timeout("promote") / 2
    assert session.calls >= 2  # it did call, each call capped by what was left


def test_notifys_route_worst_case_is_well_under_its_function_timeout() -> None:
    assert notify.route_worst_case() <= _timeout("notify") / 2


def test_notify_starts_no_route_it_may_not_finish_and_the_redelivery_posts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    posted: list[str] = []

    def post(url: str, payload: Any, channel: str) -> int:
        posted.append(channel)
        clock.now += 10  # a slow channel
        return 200

    monkeypatch.setattr(notify, "post", post)
    monkeypatch.setattr(notify, "webhook_url", lambda template, channel: f"http://hooks.test/{channel}")
    monkeypatch.setattr(notify, "time", SimpleNamespace(monotonic=clock, sleep=lambda seconds: None))
    kit = Kit("notify")
    routes = [{"channel": name, "format": "json"} for name in ("team-a", "team-b", "team-c")]
    kit.seed(RUN, manifest=manifest(notify=routes))
    failed = event(events.TRAINING_FAILED, RUN, {"model": "digits", "state": "JOB_STATE_FAILED", "error": "oom"})
    deliveries = []
    for _ in range(4):
        try:
            kit.deliver(notify.notify, failed)
        except RetryableError:
            deliveries.append(list(posted))
            continue
        deliveries.append(list(posted))
        break
    # 30 s a delivery, 26.65 s a route at worst: a route starts only while its worst case fits what is left.
    assert deliveries == [["team-a"], ["team-a", "team-b"], ["team-a", "team-b", "team-c"]]
