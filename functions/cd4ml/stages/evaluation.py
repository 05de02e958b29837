"""evaluate: gate the candidate on its held-out metrics, the manifest's threshold and the champion.

parse → read the metrics beside the model and the champion → decide (pure) → conclude.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from cd4ml import cache, evaluation_gate, events
from cd4ml.events import Event, PubSubMessage
from cd4ml.gcs import GcsPath, read_text
from cd4ml.manifest import Evaluation, parse
from cd4ml.outcome import Outcome
from cd4ml.payloads import Artifact, TrainingCompleted
from cd4ml.runtime import Context, active_run
from cd4ml.stages.training import METRICS_FILE

#: Bounds of the trainer's metrics.json: they are copied into the run record (Firestore's 1 MiB document limit) and
#: every event of the evaluation.
MAX_METRICS_BYTES = 64 * 1024
MAX_METRICS = 100
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def metrics_path(artifact: Artifact) -> GcsPath:
    return GcsPath.parse(artifact.uri.rsplit("/", 1)[0] + "/" + METRICS_FILE)


def read_metrics(text: str | None, artifact: Artifact) -> tuple[dict[str, float], list[str]]:
    """The metrics the trainer wrote beside the model, and the problems that make them unusable."""
    path = metrics_path(artifact)
    if text is None:
        return {}, [f"the trainer wrote no {METRICS_FILE} beside the model ({path.uri})"]
    if len(text.encode()) > MAX_METRICS_BYTES:
        return {}, [f"{path.uri} is {len(text.encode())} bytes; a metrics file is at most {MAX_METRICS_BYTES}"]
    try:
        doc: Any = json.loads(text)
        metrics = {str(k): float(v) for k, v in doc["metrics"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as bad:
        return {}, [f'{path.uri} is not {{"metrics": {{name: number}}, "model_sha256": ...}}: {str(bad)[:200]}']
    bad_names = [k[:80] for k in metrics if not _METRIC_NAME.match(k)]
    if len(metrics) > MAX_METRICS or bad_names or not all(math.isfinite(v) for v in metrics.values()):
        return {}, [
            f"{path.uri}: at most {MAX_METRICS} metrics, each named [A-Za-z0-9_.-]{{1,64}} with a finite number "
            f"({len(metrics)} metrics" + (f"; bad names {bad_names[:3]}" if bad_names else "") + ")"
        ]
    if doc.get("model_sha256") != artifact.sha256:
        return metrics, [
            f"{path.uri} describes model {str(doc.get('model_sha256'))[:80]}, not the artifact {artifact.sha256}"
        ]
    return metrics, []


def decide(
    model: str, artifact: Artifact, metrics_text: str | None, rule: Evaluation, champion: Mapping[str, Any] | None
) -> Outcome:
    """evaluation.passed when the metrics are the model's own and pass the gate; evaluation.failed naming why."""
    metrics, problems = read_metrics(metrics_text, artifact)
    decision = evaluation_gate.decide(metrics, rule, champion)
    reasons = problems + list(decision.reasons)
    record = {"evaluation": {"passed": not reasons, "metrics": metrics, "gate": decision.to_dict(), "reasons": reasons}}
    if reasons:
        return Outcome.event(
            events.EVALUATION_FAILED,
            {"model": model, "metrics": metrics, "gate": decision.to_dict(), "reasons": reasons},
            record,
            error="; ".join(reasons),
        )
    return Outcome.event(
        events.EVALUATION_PASSED,
        {"model": model, "model_artifact": artifact.to_dict(), "metrics": metrics, "gate": decision.to_dict()},
        record,
    )


def skipped(model: str, artifact: Artifact, champion: Mapping[str, Any] | None, on: bool) -> Outcome | None:
    """run.skipped when the candidate is the champion's model, byte for byte (nothing new, nothing delivered);
    None to evaluate it. Off with the run's cache (``--no-cache``, manifest ``cache: false``)."""
    twin, why = cache.skip(artifact.sha256, champion, on)
    if not twin:
        return None
    return Outcome.event(
        events.RUN_SKIPPED,
        {"model": model, "champion_run_id": twin, "model_sha256": artifact.sha256, "reason": why},
        {"cache.skipped": {"champion_run_id": twin, "model_sha256": artifact.sha256, "reason": why}},
    )


def evaluate(message: PubSubMessage, ctx: Context) -> None:
    """training.completed → evaluation.passed | evaluation.failed."""
    event = Event.from_message(message, [events.TRAINING_COMPLETED])
    run = active_run(ctx, event)
    if run is None:
        return
    manifest = parse(run.manifest)
    artifact = TrainingCompleted.of(event).model_artifact
    champion = ctx.ledger.champion(manifest.name)
    skip = skipped(manifest.name, artifact, champion, cache.enabled(run.cache))
    if skip is not None:
        ctx.conclude(event.subject, skip)
        return
    text = read_text(ctx.storage, metrics_path(artifact))
    ctx.conclude(event.subject, decide(manifest.name, artifact, text, manifest.evaluation, champion))
