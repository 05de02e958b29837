"""A regression gated on a lower-is-better metric (examples/diabetes: rmse, direction minimize): a better model
is promoted over the champion, a worse one refused naming both numbers. The gate used to read every metric as
higher-is-better: it refused a good rmse as "below the threshold" and promoted a much worse one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

#: A long flow: `nox -s e2e` runs it (CI does), the README's test command does not.
pytestmark = pytest.mark.flow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "diabetes"
MODEL = "diabetes-gate"


def _push(pipeline: Any, tmp: Path, alpha: float) -> None:
    """The diabetes example as MODEL, trained with ridge ``alpha``, pushed to the running stack."""
    from local_emulator import stack as local

    folder = tmp / f"{MODEL}-{alpha}"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
    manifest["name"] = MODEL
    manifest["training"]["python_package"]["package_uris"] = [f"packages/{MODEL}/trainer-0.1.0.tar.gz"]
    manifest["training"]["hyperparameters"] = {"alpha": alpha}
    manifest["canary"] = {"application": MODEL, "webhook_source": f"cd4ml-{MODEL}", "pipeline": f"{MODEL}-canary"}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    local.push_model(pipeline.stack, folder)


def test_a_better_rmse_is_promoted_and_a_worse_one_refused_with_both_numbers(pipeline: Any, tmp_path: Path) -> None:
    _push(pipeline, tmp_path, alpha=1.0)  # rmse 56.89 on the held-out split
    first = pipeline.wait(pipeline.request(MODEL), timeout=300)
    assert first["status"] == "succeeded", first.get("error")

    _push(pipeline, tmp_path, alpha=0.1)  # rmse 53.74: lower, so better
    better = pipeline.wait(pipeline.request(MODEL), timeout=300)
    assert better["status"] == "succeeded", better.get("error")
    assert better["evaluation"]["gate"]["champion_value"] == first["evaluation"]["metrics"]["rmse"]
    assert better["promotion"]["previous_run_id"] == first["run_id"]
    champion = pipeline.ledger.champion(MODEL)
    assert champion is not None and champion["run_id"] == better["run_id"]

    _push(pipeline, tmp_path, alpha=3.0)  # rmse 63.23: under the threshold 65, but 9.5 worse than the champion
    worse = pipeline.wait(pipeline.request(MODEL), timeout=300)
    assert worse["status"] == "failed"
    new, old = worse["evaluation"]["metrics"]["rmse"], better["evaluation"]["metrics"]["rmse"]
    assert worse["evaluation"]["reasons"] == [
        f"rmse {new:.4f} regresses against champion {better['run_id']} ({old:.4f}) by {new - old:.4f}, "
        "more than the allowed 1.0000 (lower is better)"
    ]
    champion = pipeline.ledger.champion(MODEL)
    assert champion is not None and champion["run_id"] == better["run_id"]  # the champion stays
