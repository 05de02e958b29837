"""First apply, in order: nothing delivers or publishes before what it needs exists.

A push subscription pushes as soon as it exists: if its function's run.invoker grant, the Pub/Sub agent's
token-creator grant on the push identity, its dead-letter publisher grant or the function's own grants are not
there yet, each push fails with 403 and burns a delivery attempt, and after max_delivery_attempts the message
is dead-lettered (https://cloud.google.com/pubsub/docs/handling-failures). A Cloud Scheduler job publishing
before its topic has a subscription loses the message: Pub/Sub keeps messages only for existing
subscriptions (https://cloud.google.com/pubsub/docs/subscriber). Terraform orders creation by references and
``depends_on`` only; this reads both with python-hcl2 (tests/terraform/graph.py).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("hcl2", reason="python-hcl2 is installed by nox -s terraform")

from . import graph, hcl

SUBSCRIPTION = "google_pubsub_subscription.stage"
SUBSCRIBER_GRANT = "google_pubsub_subscription_iam_member.grant"
SCHEDULER = "google_cloud_scheduler_job.job"
#: watch_training's stale-run query (status, updated_at) fails FAILED_PRECONDITION without this index.
STALE_RUN_INDEX = "google_firestore_index.runs_by_status"
_IAM_MEMBER = re.compile(r"^google_\w+_iam_member$")


def grant_resources(directory: Path) -> list[str]:
    """Every *_iam_member resource of the module (test_iam holds that they apply iam_bindings.yaml, and only it)."""
    return sorted(
        b.address for b in hcl.top_blocks(directory) if b.kind == "resource" and _IAM_MEMBER.match(b.labels[0])
    )


def required_edges(directory: Path) -> dict[str, list[str]]:
    """Resource -> what it must name in ``depends_on`` (or reference) to be created after it."""
    grants = grant_resources(directory)
    return {
        # Every grant a delivery or the function it reaches needs, but the subscriber grant made on the
        # subscription itself (that one can only follow it).
        SUBSCRIPTION: [g for g in grants if g != SUBSCRIBER_GRANT],
        SUBSCRIBER_GRANT: [SUBSCRIPTION],
        SCHEDULER: [SUBSCRIPTION, *grants, STALE_RUN_INDEX],
    }


def ordering_problems(directory: Path) -> list[str]:
    """Required edges that are missing (a cycle is Terraform's own error: test_plan.test_a_cycle_fails_validate)."""
    deps = graph.dependencies(directory)
    problems: list[str] = []
    for resource, needed in required_edges(directory).items():
        for target in needed:
            if target not in deps.get(resource, set()):
                problems.append(f"{resource} is not created after {target}: add it to its depends_on")
    return problems


def test_nothing_delivers_or_publishes_before_what_it_needs(module: Path) -> None:
    assert grant_resources(module), "the module makes its grants with *_iam_member resources"
    assert ordering_problems(module) == []


@pytest.fixture(scope="module")
def _scratch(module: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("ordering") / "terraform"
    shutil.copytree(module, target, ignore=shutil.ignore_patterns(".terraform", ".build"))
    return target


@pytest.fixture
def copy(_scratch: Path) -> Iterator[Path]:
    """One scratch copy of the module for all tests here, each file restored after a test changed it (files
    left as they were keep their parse cached, so each test re-parses only what it changed)."""
    saved = {path: path.read_text() for path in _scratch.glob("*.tf")}
    yield _scratch
    for path, text in saved.items():
        if path.read_text() != text:
            path.write_text(text)


def _drop_dependency(directory: Path, resource: str, target: str) -> None:
    """Remove ``target`` from the ``depends_on`` of ``resource`` in the copy."""
    type_name, name = resource.split(".")
    for path in directory.glob("*.tf"):
        text = path.read_text()
        start = text.find(f'resource "{type_name}" "{name}"')
        if start < 0:
            continue
        opening = text.find("depends_on = [", start)
        closing = text.find("]", opening)
        entry = re.compile(r"(?<=[\[\s])" + re.escape(target) + r",?")
        match = entry.search(text, opening, closing)
        assert opening >= 0 and match, f"{target} is not in the depends_on of {resource}"
        path.write_text(text[: match.start()] + text[match.end() :])
        return
    raise AssertionError(f"no {resource} in {directory}")


@pytest.mark.parametrize(
    ("resource", "target"),
    [
        (r, t)
        for r, targets in required_edges(Path(__file__).resolve().parents[2] / "terraform").items()
        for t in targets
    ],
)
def test_each_missing_edge_is_caught(copy: Path, resource: str, target: str) -> None:
    _drop_dependency(copy, resource, target)
    assert ordering_problems(copy) == [f"{resource} is not created after {target}: add it to its depends_on"]
