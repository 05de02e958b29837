"""The chaos session's models: the bench's good model, and one per model-level fault, each with its expected end."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from benchmarks.pipeline import TRAINER, make_model

FAULTY_TRAINER = Path(__file__).with_name("_faulty_trainer.py")
#: A serving image that needs nothing but the model (the build stays fast and offline).
DOCKERFILE = "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\nCOPY model/ /opt/model/\n"


@dataclass(frozen=True)
class ModelFault:
    """A model whose run must end failed, with ``reason`` in its error, at ``stage``."""

    name: str
    kind: str
    fault: str  # the trainer's --fault, or "" for a good trainer
    dockerfile: str
    reason: str
    stage: str


MODEL_FAULTS = (
    ModelFault(
        "chaos-trainer-crash", "a trainer that crashes", "crash", DOCKERFILE, "crashed on purpose", "watch_training"
    ),
    ModelFault(
        "chaos-no-model",
        "a trainer that writes no model",
        "no-model",
        DOCKERFILE,
        "exactly one model.* file",
        "watch_training",
    ),
    ModelFault(
        "chaos-two-models",
        "a trainer that writes two models",
        "two-models",
        DOCKERFILE,
        "exactly one model.* file",
        "watch_training",
    ),
    ModelFault(
        "chaos-unbound-metrics",
        "metrics not bound to the model",
        "unbound-metrics",
        DOCKERFILE,
        "describes model",
        "evaluate",
    ),
    ModelFault(
        "chaos-bad-dockerfile",
        "a Dockerfile that fails",
        "",
        DOCKERFILE + "COPY no-such-file /opt/\n",
        "ended FAILURE",
        "on_build",
    ),
)


def make(workdir: Path, name: str, fault: str = "", dockerfile: str = DOCKERFILE) -> Path:
    """A bench model folder with the faulty trainer (``fault``) and a minimal serving Dockerfile."""
    folder = make_model(workdir, name)
    trainer = folder / "trainer"
    shutil.copy(TRAINER, trainer / "centroid.py")
    shutil.copy(FAULTY_TRAINER, trainer / "task.py")
    serving = folder / "serving"
    shutil.rmtree(serving)
    serving.mkdir()
    (serving / "Dockerfile").write_text(dockerfile)
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["serving"] = {"dockerfile": "serving/Dockerfile", "base_image": "python:3.11-slim"}
    if fault:
        manifest["training"]["args"] = [*manifest["training"].get("args", []), f"--fault={fault}"]
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder
