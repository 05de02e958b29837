"""What each stage requires of the run record before it acts: the record is the truth, an event is a doorbell.

A message that reaches a stage may be forged, replayed or stale: anyone allowed to publish on a topic (or a
compromised build pushing to the registry) can ring. So each stage states the facts the steps before it must
have recorded, and ``check`` compares the event with them before anything happens. A message that disagrees is
refused as a PermanentError: dead-lettered with the reason, noted on the run (``rejected_messages``), the run's
status unchanged — the real step may still come.

Each stage declares its checks in the registry of stages (``cd4ml.stages.STAGES``, ``requires``), in order. A
check is a pure function of the run record and the event; it returns what the record says instead ("" when the
fact holds).
"""

from __future__ import annotations

from collections.abc import Callable

from cd4ml.errors import PermanentError
from cd4ml.events import Event
from cd4ml.run import Run

Check = Callable[[Run, Event], str]


class RecordDisagrees(PermanentError):
    """The event asks a stage to act on facts the run record does not hold."""


def _digest(reference: str) -> str:
    return reference.rpartition("@")[2] if "@sha256:" in reference else ""


def evaluated_model(run: Run, event: Event) -> str:
    """delivery.cleared: the model to build is the one the run evaluated (and passed), byte for byte."""
    if run.evaluation is None or not run.evaluation.passed:
        return "the run has no passed evaluation"
    recorded = run.model_artifact.sha256 if run.model_artifact else ""
    named = str((event.data.get("model_artifact") or {}).get("sha256") or "")
    if not recorded or named != recorded:
        return f"the event names model sha256 {named[:12] or 'none'}, the run evaluated {recorded[:12] or 'none'}"
    return ""


def approval_applied(run: Run, event: Event) -> str:
    """delivery.cleared: a run that was asked for an approval goes on only with an approver's recorded approve."""
    approval = run.approval
    if approval is None or not approval.requested_at:
        return ""
    if approval.decision != "approve" or approval.by not in approval.approvers:
        return f"approval was requested at {approval.requested_at} and no approver's approve is recorded"
    return ""


def built_image(run: Run, event: Event) -> str:
    """image.pushed / canary.succeeded: the image is the one Cloud Build reported for the run's recorded build."""
    image = run.image
    if image.status != "SUCCESS" or not image.digest or not image.build_id:
        return (
            f"the run's build {image.build_id or '(none recorded)'} has not succeeded ({image.status or 'no status'})"
        )
    named = _digest(str(event.data.get("reference") or "")) if "reference" in event.data else image.digest
    if named != image.digest:
        return f"the event names image {named[:19] or 'without a digest'}, build {image.build_id} reported {image.digest[:19]}"
    if _digest(image.reference) != image.digest:
        return f"the registry's push of digest {image.digest[:19]} is not recorded"
    return ""


def canary_succeeded(run: Run, event: Event) -> str:
    """canary.succeeded: the run's own canary execution ended with the verdict succeeded (watch_canary's record)."""
    canary = run.canary
    if canary is None or canary.verdict != "succeeded":
        verdict = canary.verdict if canary and canary.verdict else "none"
        return f"the run's canary verdict is {verdict}, not succeeded"
    named = str(event.data.get("execution_id") or "")
    if named != canary.execution_id:
        return f"the event names execution {named or 'none'}, the run's canary is execution {canary.execution_id}"
    return ""


def problems(checks: tuple[Check, ...], run: Run, event: Event) -> list[str]:
    """What the record says against the event, for every one of ``checks`` (empty: the event agrees)."""
    return [p for p in (check(run, event) for check in checks) if p]


def check(stage: str, checks: tuple[Check, ...], run: Run, event: Event) -> None:
    """RecordDisagrees naming every problem when the run record does not hold what ``stage`` requires."""
    found = problems(checks, run, event)
    if found:
        raise RecordDisagrees(
            f"{stage} refused {event.type} {event.id} (nothing done, run {run.run_id} unchanged): "
            "the run record disagrees",
            found,
            run_id=run.run_id,
        )
