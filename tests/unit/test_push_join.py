"""The join of a build's SUCCESS and a registry push that came first: on_build, with exactly the environment the
catalog gives it (as Terraform and the local stack do), announces image.pushed."""

from __future__ import annotations

import dataclasses

from cd4ml import catalog, events
from cd4ml.settings import Settings
from cd4ml.stages.delivery import announce_push, push_key
from tests.stagekit import Kit

RUN = "gated-20300101t030000z"
DIGEST = "sha256:" + "8" * 64
REGISTRY = "127.0.0.1:5000/cd4ml-{model}"


def test_on_build_announces_a_push_noted_before_the_build_reported_with_its_catalog_environment() -> None:
    kit = Kit("on_build", registry=REGISTRY)
    listed = set(catalog.load().stage("on_build").env) | {"CD4ML_STAGE", "CD4ML_DEAD_LETTER_TOPIC"}
    deployed = {f"CD4ML_{k.upper()}": str(v) for k, v in dataclasses.asdict(kit.ctx.settings).items()}
    kit.ctx.settings = Settings.from_env({k: v for k, v in deployed.items() if k in listed})
    tag = f"127.0.0.1:5000/cd4ml-gated/gated:{RUN}"
    noted = {"tag": tag, "digest_ref": f"127.0.0.1:5000/cd4ml-gated/gated@{DIGEST}", "at": "2030-01-01T03:00:00.000Z"}
    kit.seed(RUN, image={"status": "SUCCESS", "digest": DIGEST, "tag": tag, "pushes": {push_key(DIGEST): noted}})
    announce_push(kit.ctx, RUN)
    assert kit.bus.types() == [events.IMAGE_PUSHED]
    assert kit.run(RUN)["image"]["reference"] == f"127.0.0.1:5000/cd4ml-gated/gated@{DIGEST}"
