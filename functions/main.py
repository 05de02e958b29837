"""Cloud Functions (gen2) entry points: one thin CloudEvent handler per stage.

Each handler imports its stage lazily, so a function loads only the clients it uses.
"""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from cd4ml import push
from cd4ml.runtime import dispatch

# A request that is no push body gets a 400 naming the problem (functions-framework's own names nothing, or crashes).
push.install(functions_framework.errorhandler)


@functions_framework.cloud_event
def fetch_data(cloud_event: CloudEvent) -> None:
    """run.requested → data.fetched."""
    from cd4ml.stages.fetch import fetch_data as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def submit_training(cloud_event: CloudEvent) -> None:
    """data.fetched → training.submitted."""
    from cd4ml.stages.training import submit_training as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def note_arrival(cloud_event: CloudEvent) -> None:
    """Cloud Storage notification (JSON_API_V1) → the latest upload of each model that watches it."""
    from cd4ml.stages.arrival import note_arrival as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def start_on_data(cloud_event: CloudEvent) -> None:
    """watch.ticked → run.requested for each model whose new data has been quiet for its quiet_seconds."""
    from cd4ml.stages.arrival import start_on_data as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def watch_training(cloud_event: CloudEvent) -> None:
    """watch.ticked → training.completed | training.failed."""
    from cd4ml.stages.training import watch_training as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def evaluate(cloud_event: CloudEvent) -> None:
    """training.completed → evaluation.passed | evaluation.failed."""
    from cd4ml.stages.evaluation import evaluate as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def clear_delivery(cloud_event: CloudEvent) -> None:
    """evaluation.passed → delivery.cleared | approval.requested (the run waits for an approver)."""
    from cd4ml.stages.approval import clear_delivery as stage

    dispatch(cloud_event, stage)


@functions_framework.http
def decide_approval(request: flask.Request) -> tuple[dict[str, Any], int]:
    """POST {run_id, decision, reason} with `Authorization: Bearer ID_TOKEN` → delivery.cleared | run.rejected, or
    the refusal (recorded on a waiting run), its author the token's verified email."""
    from cd4ml.runtime import context
    from cd4ml.stages.approval import decide_http

    return decide_http(request, context())


@functions_framework.cloud_event
def watch_approvals(cloud_event: CloudEvent) -> None:
    """watch.ticked → run.rejected for approval requests that expired."""
    from cd4ml.stages.approval import watch_approvals as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def build_image(cloud_event: CloudEvent) -> None:
    """delivery.cleared → a Cloud Build build of the serving image."""
    from cd4ml.stages.delivery import build_image as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def on_build(cloud_event: CloudEvent) -> None:
    """cloud-builds → image.built | image.failed."""
    from cd4ml.stages.delivery import on_build as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def on_push(cloud_event: CloudEvent) -> None:
    """gcr → image.pushed."""
    from cd4ml.stages.delivery import on_push as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def trigger_canary(cloud_event: CloudEvent) -> None:
    """image.pushed → Spinnaker webhook → canary.triggered | canary.failed."""
    from cd4ml.stages.delivery import trigger_canary as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def watch_canary(cloud_event: CloudEvent) -> None:
    """watch.ticked → canary.succeeded | canary.failed (the Spinnaker execution's verdict, or its deadline)."""
    from cd4ml.stages.canary import watch_canary as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def promote(cloud_event: CloudEvent) -> None:
    """canary.succeeded → registry alias moved → model.promoted (the run succeeds, its model is champion)."""
    from cd4ml.stages.canary import promote as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def notify(cloud_event: CloudEvent) -> None:
    """failures, rejections, approvals, promotions → the model's Slack-compatible and JSON webhooks, once each."""
    from cd4ml.stages.notify import notify as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def on_dead_letter(cloud_event: CloudEvent) -> None:
    """A message Pub/Sub dead-lettered after an attempt that never answered → its run ended failed."""
    from cd4ml.stages.dead_letters import on_dead_letter as stage

    dispatch(cloud_event, stage)
