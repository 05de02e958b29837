"""Google's topics (cloud-builds, gcr) are the project's, not Terraform's: read, never created nor destroyed.

Enabling the Artifact Registry API creates `gcr`, or finds it made by Container Registry
(https://cloud.google.com/artifact-registry/docs/configure-notifications); `cloud-builds` is created by hand
(https://cloud.google.com/build/docs/subscribe-build-notifications). Creating either in Terraform fails with
409 where it exists, and a topic Terraform did create is destroyed once Terraform stops declaring it. So:
README step 1 makes sure both exist (describe || create), Terraform reads them (data "google_pubsub_topic",
which fails the plan when one is missing), and a `removed` block forgets those an older deployment created
without destroying them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hcl2", reason="python-hcl2 is installed by nox -s terraform")

from . import graph, hcl
from .docs import deploy_section

#: What each managed google_pubsub_topic may be made from: cd4ml's own topics only.
OWN_TOPICS = {"${local.topic_ids}", "${local.dead_letter_topics}", "${local.notification_topics}"}


def _blocks(module: Path, kind: str) -> dict[str, hcl.TopBlock]:
    return {b.address: b for b in hcl.top_blocks(module) if b.kind == kind}


def test_terraform_creates_no_google_topic(module: Path, tf_locals: dict[str, Any]) -> None:
    managed = {a: b for a, b in _blocks(module, "resource").items() if a.startswith("google_pubsub_topic.")}
    assert {a: b.body["for_each"] for a, b in managed.items() if b.body.get("for_each") not in OWN_TOPICS} == {}
    own = (
        set(tf_locals["topic_ids"].values())
        | set(tf_locals["dead_letter_topics"].values())
        | set(tf_locals["notification_topics"])
    )
    assert not own & set(tf_locals["foreign_topics"])


def test_google_topics_are_read_and_their_subscriptions_wait_for_the_read(module: Path) -> None:
    read = _blocks(module, "data").get("data.google_pubsub_topic.foreign")
    assert read is not None, 'terraform/ has no data "google_pubsub_topic" "foreign"'
    assert (read.body["for_each"], read.body["name"]) == ("${local.foreign_topics}", "${each.key}")
    assert "data.google_pubsub_topic.foreign" in graph.dependencies(module)["google_pubsub_subscription.stage"]


def test_topics_an_older_deployment_created_are_forgotten_not_destroyed(module: Path) -> None:
    removed = [b.body for b in hcl.top_blocks(module) if b.kind == "removed"]
    froms = {str(r.get("from")): r for r in removed}
    assert "${google_pubsub_topic.foreign}" in froms, "no `removed { from = google_pubsub_topic.foreign }`"
    lifecycle = froms["${google_pubsub_topic.foreign}"].get("lifecycle")
    assert isinstance(lifecycle, list) and hcl.is_block(lifecycle), (
        "the removed block needs `lifecycle { destroy = false }`"
    )
    assert lifecycle[0].get("destroy") is False, "the removed block must not destroy"


def test_readme_step_1_makes_sure_every_google_topic_exists(tf_locals: dict[str, Any]) -> None:
    section = deploy_section()
    step_1 = section[section.index("### 1.") : section.index("### 2.")]
    for topic in sorted(tf_locals["foreign_topics"]):
        idempotent = (
            rf"gcloud pubsub topics describe {re.escape(topic)}\b[^\n|]*\|\|\s*(\\\n\s*)?"
            rf"gcloud pubsub topics create {re.escape(topic)}\b"
        )
        assert re.search(idempotent, step_1), f"README step 1 does not make sure topic {topic} exists"
    assert not re.search(r"adopt_foreign_topics\s*=", section), "the README still sets adopt_foreign_topics"
