"""The registry of stages: each stage is declared here once — its handler and what it requires of the run record.

Its other half is its catalog entry (``catalog.yaml``: trigger, emits, timeout, memory, the clients it uses),
which Terraform and the local stack read too. Everything else is derived: ``functions/main.py`` exports one
functions-framework entry point per stage from ``STAGES``; ``runtime.dispatch`` runs the handler;
``runtime.checked_run`` applies ``requires`` before the stage acts; ``Context.conclude`` lets out only the events
the catalog says the stage emits.

Every handler has the same shape (``docs/architecture.md``): parse the event → read the run (``checked_run``:
running, and holding what the stage requires) → decide (a pure function returning an ``Outcome``) → at most one
effect, its registered ``effect`` through ``Context.once`` → ``conclude`` (the one writer of a run's status and of the events it emits).
Tick stages run the same steps per run of one ledger query (``runtime.sweep``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cd4ml import catalog, requirements
from cd4ml.requirements import Check

if TYPE_CHECKING:
    from cd4ml.runtime import Handler


@dataclass(frozen=True)
class Stage:
    """One Cloud Function: ``handler`` is ``module:function`` under ``cd4ml.stages`` (imported on first use, so a
    function loads only the clients it uses); ``requires`` are the facts of the run record it acts on."""

    name: str
    handler: str
    requires: tuple[Check, ...] = ()
    #: The name of its one side effect outside the ledger (a job, a build, a webhook call, an alias move, a post),
    #: run at most once per run through ``Context.once``; "" for a stage whose only act is its record.
    effect: str = ""

    @property
    def spec(self) -> catalog.Stage:
        """Its catalog entry: trigger, emits, timeout and resources."""
        return catalog.load().stage(self.name)

    def load(self) -> Handler:
        module, _, function = self.handler.partition(":")
        found: Handler = getattr(importlib.import_module(f"cd4ml.stages.{module}"), function)
        return found


STAGES: tuple[Stage, ...] = (
    Stage("fetch_data", "fetch:fetch_data"),
    Stage("submit_training", "training:submit_training", effect="training-job"),
    Stage("note_arrival", "arrival:note_arrival"),
    Stage("start_on_data", "arrival:start_on_data"),
    Stage("watch_training", "training:watch_training"),
    Stage("evaluate", "evaluation:evaluate"),
    Stage("clear_delivery", "approval:clear_delivery"),
    Stage("decide_approval", "approval:decide_http"),
    Stage("watch_approvals", "approval:watch_approvals"),
    Stage(
        "build_image",
        "delivery:build_image",
        (requirements.evaluated_model, requirements.approval_applied),
        effect="image-build",
    ),
    Stage("on_build", "delivery:on_build"),
    Stage("on_push", "delivery:on_push"),
    Stage("trigger_canary", "delivery:trigger_canary", (requirements.built_image,), effect="canary-webhook"),
    Stage("watch_canary", "canary:watch_canary"),
    Stage("promote", "canary:promote", (requirements.canary_succeeded, requirements.built_image), effect="promotion"),
    Stage("on_dead_letter", "dead_letters:on_dead_letter"),
    Stage("notify", "notify:notify", effect="notify"),  # one post per event and channel
)


def stage(name: str) -> Stage:
    """The registered stage ``name``; KeyError naming the registered ones."""
    for found in STAGES:
        if found.name == name:
            return found
    raise KeyError(f"no stage named {name!r} is registered; stages are {', '.join(s.name for s in STAGES)}")
