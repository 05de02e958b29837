"""Cloud Functions (gen2) entry points: one per stage of the registry (``cd4ml.stages.STAGES``), named as the stage.

A CloudEvent stage's entry point runs its handler through ``runtime.dispatch``; the handler's module is imported
on the first delivery, so a function loads only the clients it uses. ``decide_approval`` is the one HTTP stage:
people call it with an ID token.
"""

from __future__ import annotations

from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent

from cd4ml import push
from cd4ml.runtime import dispatch
from cd4ml.stages import STAGES, Stage

# A request that is no push body gets a 400 naming the problem (functions-framework's own names nothing, or crashes).
push.install(functions_framework.errorhandler)


def _entry_point(stage: Stage) -> Any:
    """functions-framework's ``@cloud_event`` entry point named ``stage.name`` (its registry keys on the name)."""

    def entry(cloud_event: CloudEvent) -> None:
        dispatch(cloud_event, stage.load())

    entry.__name__ = entry.__qualname__ = stage.name
    entry.__doc__ = stage.spec.doc
    return functions_framework.cloud_event(entry)


@functions_framework.http
def decide_approval(request: flask.Request) -> tuple[dict[str, Any], int]:
    """POST {run_id, decision, reason} with `Authorization: Bearer ID_TOKEN` → delivery.cleared | run.rejected, or
    the refusal (recorded on a waiting run), its author the token's verified email."""
    from cd4ml.runtime import context
    from cd4ml.stages.approval import decide_http

    return decide_http(request, context())


globals().update({stage.name: _entry_point(stage) for stage in STAGES if not stage.spec.http})
