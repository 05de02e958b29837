"""Cloud Functions (gen2) entry points: one thin CloudEvent handler per stage.

Each handler imports its stage lazily, so a function loads only the clients it uses.
"""

from __future__ import annotations

import functions_framework
from cloudevents.http import CloudEvent

from cd4ml.runtime import dispatch


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
def watch_training(cloud_event: CloudEvent) -> None:
    """watch.ticked → training.completed | training.failed."""
    from cd4ml.stages.training import watch_training as stage

    dispatch(cloud_event, stage)


@functions_framework.cloud_event
def evaluate(cloud_event: CloudEvent) -> None:
    """training.completed → evaluation.passed | evaluation.failed."""
    from cd4ml.stages.evaluation import evaluate as stage

    dispatch(cloud_event, stage)
