"""What a hop costs in Firestore operations (what production bills), so the count cannot silently grow back.

A hop is: the handler reads its run, acts once (a claim, the act, the claim marked done), and concludes (the record
with its outbox entry, the publish, the publish mark). Counted on the in-memory store through ``store.Counting``.
"""

from __future__ import annotations

from typing import Any

from cd4ml import events
from cd4ml.ledger import Ledger, deferring
from cd4ml.outcome import Outcome
from cd4ml.store import Counting, MemoryStore, Operations
from tests.stagekit import Kit

RUN = "digits-20300101t030000z"
SUBMITTED = {
    "model": "digits",
    "job": "projects/p/locations/europe-west1/customJobs/1",
    "dataset_sha256": "a" * 64,
    "model_dir": "gs://artifacts/runs/digits-20300101t030000z/model",
}


def _kit() -> tuple[Kit, Counting]:
    meter = Counting(MemoryStore())
    kit = Kit("submit_training", ledger=Ledger(meter))
    kit.seed(RUN, events=[])
    return kit, meter


def _outcome() -> Outcome:
    return Outcome.event(events.TRAINING_SUBMITTED, SUBMITTED, record={"training.job": SUBMITTED["job"]})


def test_conclude_writes_the_record_and_the_publish_mark_and_reads_nothing_more() -> None:
    kit, meter = _kit()
    assert kit.ctx.ledger.run(RUN) is not None  # the handler reads its run first
    before = meter.total()
    kit.ctx.conclude(RUN, _outcome())
    spent = meter.total() - before
    assert kit.bus.types() == [events.TRAINING_SUBMITTED]
    assert spent == Operations(reads=0, writes=2, commits=2), spent
    record = kit.run(RUN)
    assert record["outbox"] == [] and record["outbox_pending"] is False
    assert record["published"] == [kit.bus.published[0].id]


def test_a_hop_with_an_effect_costs_one_read_four_writes_and_three_commits() -> None:
    kit, meter = _kit()
    before = meter.total()
    assert kit.ctx.ledger.run(RUN) is not None

    def act() -> dict[str, Any]:
        return {"job": SUBMITTED["job"]}

    with deferring():  # as runtime.dispatch runs every handler
        assert kit.ctx.ledger.once(RUN, "training-job", act) == ({"job": SUBMITTED["job"]}, True)
        kit.ctx.conclude(RUN, _outcome())
    spent = meter.total() - before
    # The run read; the claim; the record and the claim marked done in one commit; the publish mark.
    assert spent == Operations(reads=1, writes=4, commits=3), spent
    assert kit.ctx.ledger.once(RUN, "training-job", act) == ({"job": SUBMITTED["job"]}, False)


def test_a_done_mark_no_record_took_is_written_when_the_handler_ends() -> None:
    kit, _ = _kit()
    with deferring():
        assert kit.ctx.ledger.once(RUN, "training-job", lambda: {"job": "j"}) == ({"job": "j"}, True)
    assert (kit.ctx.ledger.claim(RUN, "training-job") or {})["state"] == "done"
    assert Ledger(kit.ledger.store).once(RUN, "training-job", lambda: {"job": "again"}) == ({"job": "j"}, False)


def test_a_redelivered_conclusion_publishes_nothing_and_writes_nothing() -> None:
    kit, meter = _kit()
    kit.ctx.conclude(RUN, _outcome())
    before = meter.total()
    kit.ctx.conclude(RUN, _outcome())
    assert len(kit.bus.published) == 1
    assert (meter.total() - before).writes == 0


def test_a_record_on_a_run_written_by_another_instance_meanwhile_reads_it_again() -> None:
    kit, _ = _kit()
    other = Ledger(kit.ledger.store)
    assert kit.ctx.ledger.run(RUN) is not None
    other.note(RUN, {"last_failure": {"stage": "x", "error": "y"}})  # written since this instance read the run
    kit.ctx.conclude(RUN, _outcome())
    record = kit.run(RUN)
    assert record["last_failure"] == {"stage": "x", "error": "y"}  # not lost: the precondition caught the stale copy
    assert record["training"]["job"] == SUBMITTED["job"] and record["published"] == [kit.bus.published[0].id]


def test_a_deferred_done_mark_never_overwrites_a_claim_taken_over_meanwhile() -> None:
    kit, _ = _kit()
    with deferring():
        kit.ctx.ledger.once(RUN, "training-job", lambda: {"job": "j"})
        kit.ledger.store.update(f"runs/{RUN}/effects/training-job", {"holder": "successor"})  # taken over
        kit.ctx.conclude(RUN, _outcome())
    claim = kit.ctx.ledger.claim(RUN, "training-job") or {}
    assert claim["holder"] == "successor" and claim["state"] == "claimed"
    assert kit.run(RUN)["training"]["job"] == SUBMITTED["job"] and kit.bus.types() == [events.TRAINING_SUBMITTED]


def test_a_check_that_refuses_what_this_instance_knew_is_asked_again_of_what_the_server_holds() -> None:
    kit, _ = _kit()
    assert kit.ctx.ledger.run(RUN) is not None  # known: no approval yet
    Ledger(kit.ledger.store).note(RUN, {"approval": {"state": "approved"}})  # another instance records one

    def approved(record: Any) -> None:
        if (record.get("approval") or {}).get("state") != "approved":
            raise PermissionError("not approved")

    kit.ctx.conclude(RUN, _outcome(), check=approved)
    assert kit.bus.types() == [events.TRAINING_SUBMITTED]


def test_a_run_opened_here_is_recorded_on_without_reading_it_again() -> None:
    # fetch_data opens the run, then records data.fetched on it: the create's version is the precondition.
    meter = Counting(MemoryStore())
    kit = Kit("fetch_data", ledger=Ledger(meter))
    requested = events.Event.new(events.RUN_REQUESTED, RUN, {"model": "digits", "trigger": "manual"}, source="//test")
    before = meter.total()
    _, created = kit.ctx.ledger.open_run(
        RUN, model="digits", scheduled_time=events.now(), trigger="manual", manifest={}, event=requested
    )
    assert created
    kit.ctx.ledger.record(RUN, fields={"dataset.sha256": "a" * 64})
    assert meter.total() - before == Operations(reads=0, writes=2, commits=2)
    assert kit.run(RUN)["dataset"]["sha256"] == "a" * 64
    # a second request for the same run finds it (one create refused, one read) and opens nothing
    again, created = kit.ctx.ledger.open_run(
        RUN, model="digits", scheduled_time=events.now(), trigger="manual", manifest={}, event=requested
    )
    assert not created and again["dataset"]["sha256"] == "a" * 64
