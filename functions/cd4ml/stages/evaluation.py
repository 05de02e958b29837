"""evaluate: gate the candidate on its held-out metrics, the manifest's threshold and the champion."""

from __future__ import annotations

import json
from typing import Any

from cd4ml import events, gate
from cd4ml.events import Event, PubSubMessage
from cd4ml.gcs import GcsPath, read_text
from cd4ml.manifest import parse
from cd4ml.payloads import Artifact, TrainingCompleted
from cd4ml.runtime import Context, active_run
from cd4ml.stages.training import METRICS_FILE


def read_metrics(ctx: Context, artifact: Artifact) -> tuple[dict[str, float], list[str]]:
    """The metrics the evaluator wrote beside the model, and the problems that make them unusable."""
    path = GcsPath.parse(artifact.uri.rsplit("/", 1)[0] + "/" + METRICS_FILE)
    text = read_text(ctx.storage, path)
    if text is None:
        return {}, [f"the trainer wrote no {METRICS_FILE} beside the model ({path.uri})"]
    try:
        doc: Any = json.loads(text)
        metrics = {str(k): float(v) for k, v in doc["metrics"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as bad:
        return {}, [f"{path.uri} is not {{\"metrics\": {{name: number}}, \"model_sha256\": ...}}: {bad}"]
    if doc.get("model_sha256") != artifact.sha256:
        return metrics, [f"{path.uri} describes model {doc.get('model_sha256')}, not the artifact {artifact.sha256}"]
    return metrics, []


def evaluate(message: PubSubMessage, ctx: Context) -> None:
    """training.completed → evaluation.passed | evaluation.failed."""
    event = Event.from_message(message, [events.TRAINING_COMPLETED])
    run = active_run(ctx, event)
    if run is None:
        return
    run_id = event.subject
    manifest = parse(run["manifest"])
    artifact = TrainingCompleted.of(event).model_artifact
    metrics, problems = read_metrics(ctx, artifact)
    decision = gate.decide(metrics, manifest.evaluation, ctx.ledger.champion(manifest.name))
    reasons = problems + list(decision.reasons)
    record = {"evaluation": {"passed": not reasons, "metrics": metrics, "gate": decision.to_dict(),
                             "reasons": reasons}}
    if reasons:
        ctx.emit(run_id, events.EVALUATION_FAILED,
                 {"model": manifest.name, "metrics": metrics, "gate": decision.to_dict(), "reasons": reasons},
                 record, error={"stage": ctx.settings.stage, "message": "; ".join(reasons)})
        return
    ctx.emit(run_id, events.EVALUATION_PASSED,
             {"model": manifest.name, "model_artifact": artifact.to_dict(), "metrics": metrics, "gate": decision.to_dict()},
             record)
