"""``python -m benchmarks.chaos`` (``nox -s chaos``): runs under faults on a private local stack; nothing lost,
nothing done twice, every bad input and outage handled. Exit 1 otherwise.

Phases, on one stack whose functions run behind ``local_emulator.stack.supervisor`` (restarted after a crash) and
whose every stage subscription has two twins (each message delivered 3 times):

1. storm: N runs at once, each requested twice (a scheduler firing its slot twice) plus one real scheduler slot
   fired twice; 20 % of deliveries SIGKILL their instance at a random moment; some runs' effects crash their
   caller at the worst moment (Vertex job, build, webhook done, caller killed before it records the result);
   the model-level faults (models.py) and every bad input (bad_inputs.py) sent meanwhile.
2. short outages: Vertex, Cloud Build and Gate each down for less than the retry budget: the runs succeed.
3. long outages: each down longer than the retry budget: the run ends failed at once, with the reason.

The table goes to stdout, progress to stderr, every figure to ``benchmarks/results/chaos.json``; the last line
is ``chaos: R runs, L lost, D duplicate effects, B/K bad inputs handled, O/P outages recovered``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from local_emulator import stack as local
from local_emulator.common import faults
from local_emulator.pubsub.topology import plan, subscribe
from local_emulator.scheduler import scheduler_attributes

from benchmarks.chaos import bad_inputs, models, verdicts
from benchmarks.pipeline import SOURCE, Pipeline, exit_on_sigterm, running, say
from cd4ml import catalog, events, ledger
from cd4ml.events import Event, format_time
from cd4ml.run import TERMINAL

RESULTS = Path(__file__).resolve().parent.parent / "results" / "chaos.json"
GOOD = "chaos-good"
#: (service, the milestone after which its run needs it, the stage that meets the outage)
SERVICES = (
    ("vertex", events.DATA_FETCHED, "submit_training"),
    ("cloudbuild", events.EVALUATION_PASSED, "build_image"),
    ("gate", events.IMAGE_BUILT, "trigger_canary"),
    # the registry's API (through its chaos front; builds push past it), needed by promote after the canary
    ("registry", events.IMAGE_BUILT, "promote"),
)
WORST = (("vertex.create", "submit_training"), ("cloudbuild.create", "build_image"), ("gate.webhook", "trigger_canary"))
#: The alias move's worst moment, keyed by the tag (every chaos run moves the same one): the first promotion's.
WORST_ALIAS = ("registry.tag", verdicts.ALIAS, "promote")


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="good runs of the storm (default 50)")
    parser.add_argument("--crash-rate", type=float, default=0.2, help="share of deliveries killed (default 0.2)")
    parser.add_argument("--worst", type=int, default=3, help="runs crashed at the worst moment, per effect (default 3)")
    parser.add_argument("--short-outage", type=float, default=20.0, help="seconds of a short outage (default 20)")
    parser.add_argument("--timeout", type=float, default=2400.0, help="seconds the storm may take (default 2400)")
    parser.add_argument("--tick-seconds", type=float, default=2.0, help="watch tick period (the stack's: 2 s)")
    parser.add_argument("--skip", choices=("storm", "short", "long"), action="append", default=[])
    parser.add_argument(
        "--service", choices=[s[0] for s in SERVICES], action="append", default=[], help="outages of these only"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (stack state and logs)")
    return parser.parse_args(argv)


def _twin_subscriptions(pipeline: Pipeline) -> None:
    """Two more push subscriptions per stage, same topic, same function: every message delivered 3 times.

    Not the watch tick's: it is a clock that fires again anyway. Tripled, with a fifth of its deliveries killing
    the watch functions, their one local instance was restarting all the time, and the emulator's pushes to
    them, each held while the instance restarts, starved every other subscription (runs stalled for minutes)."""
    topology = plan(catalog.load())
    tick = catalog.topic_id(events.WATCH_TICKED)
    twins = [
        dataclasses.replace(s, name=f"{s.name}-twin{n}")
        for n in (1, 2)
        for s in topology.subscriptions
        if s.stage and s.topic != tick
    ]
    subscribe(
        local.PROJECT,
        dataclasses.replace(topology, subscriptions=tuple(twins)),
        pipeline.stack.endpoints["functions"],
        local.push_routes(pipeline.stack),
    )


def _request_twice(pipeline: Pipeline, model: str, scheduled: Any = None) -> str:
    """A run requested by two messages for one slot (distinct ids), as a scheduler firing twice does."""
    scheduled = scheduled or pipeline.slot()
    run_id = ledger.run_id(model, scheduled)
    for _ in range(2):
        pipeline.bus.publish(
            Event.new(
                events.RUN_REQUESTED,
                run_id,
                {"model": model, "scheduled_time": format_time(scheduled), "trigger": "manual"},
                source=SOURCE,
                id=str(uuid.uuid4()),
            )
        )
    return run_id


def _scheduler_twice(pipeline: Pipeline, model: str) -> None:
    """Cloud Scheduler's own message (no subject, no time: the slot is the manifest's), fired twice."""
    attributes = scheduler_attributes(pipeline.settings.project, f"cd4ml-{model}", events.RUN_REQUESTED)
    for _ in range(2):
        pipeline.bus.publisher.publish(
            pipeline.bus.topic_path(catalog.topic_id(events.RUN_REQUESTED)),
            json.dumps({"model": model, "trigger": "schedule"}).encode(),
            **attributes,
        ).result()


def _first(pipeline: Pipeline, run_ids: list[str], check: Any, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run_id, record in pipeline.records(run_ids).items():
            if check(record):
                return run_id
        time.sleep(0.5)
    raise RuntimeError("no run reached the state the bad inputs need")


def storm(pipeline: Pipeline, options: argparse.Namespace, chaos: Path, report: dict[str, Any]) -> None:
    (chaos / "crash-rate").write_text(str(options.crash_rate))
    faults.plan_crash(chaos, *WORST_ALIAS)
    # The faulty runs first: the bad inputs wait for one of them to end, and Vertex trains two jobs at a time.
    faulty = {_request_twice(pipeline, f.name): f for f in models.MODEL_FAULTS}
    good: list[str] = []
    for n in range(options.runs):
        scheduled = pipeline.slot()
        if n < options.worst * len(WORST):
            point, stage = WORST[n % len(WORST)]
            faults.plan_crash(chaos, point, ledger.run_id(GOOD, scheduled), stage)
        good.append(_request_twice(pipeline, GOOD, scheduled))
    _scheduler_twice(pipeline, GOOD)
    from cd4ml.manifest import loads

    manifest = loads(pipeline.stack.root.joinpath("..", GOOD, "manifest.yaml").read_text())
    good.append(ledger.run_id(GOOD, manifest.scheduled_time(pipeline_now())))
    say(f"storm: {len(good)} good runs and {len(faulty)} faulty ones requested, crashes at {options.crash_rate:.0%}")
    # Bad inputs, once a faulty run ended and while good runs are running.
    sender = bad_inputs.Sender(pipeline, GOOD)
    sender.ended = _first(pipeline, list(faulty), lambda r: r.get("status") in TERMINAL, options.timeout)
    sender.live = _first(pipeline, good, lambda r: r.get("status") == "running", options.timeout)
    sent = [(case, case.deliver(sender)) for case in bad_inputs.CASES]
    say(f"storm: {len(sent)} bad inputs sent; waiting for the runs")
    records = pipeline.wait([*good, *faulty], options.timeout, poll=2.0)
    (chaos / "crash-rate").write_text("0")
    lost = [
        f"{r}: {(records.get(r) or {}).get('status', 'never opened')} "
        f"{((records.get(r) or {}).get('error') or {}).get('message', '')[:200]}"
        for r in good
        if (records.get(r) or {}).get("status") != "succeeded"
    ]
    for run_id, fault in faulty.items():
        record = records.get(run_id) or {}
        error = record.get("error") or {}
        if (
            record.get("status") != "failed"
            or fault.reason not in error.get("message", "")
            or error.get("stage") != fault.stage
        ):
            lost.append(f"{run_id} ({fault.kind}): {record.get('status', 'never opened')} {error}")
    letters = verdicts.dead_letters(pipeline)
    judged = []
    for case, key in sent:
        ok, found = verdicts.judge(case, key, letters, pipeline.stack.logs, sender.answers)
        judged.append({"kind": case.kind, "level": case.level, "stage": case.stage, "handled": ok, "found": found})
    judged += [
        {
            "kind": f.kind,
            "level": "model",
            "stage": f.stage,
            "handled": not any(r in x for x in lost),
            "found": ((records.get(r) or {}).get("error") or {}).get("message", "")[:300],
        }
        for r, f in faulty.items()
    ]
    live = records.get(sender.live) or {}
    report["storm"] = {
        "runs": good + list(faulty),
        "lost": lost,
        "duplicates": verdicts.duplicate_effects(pipeline, records, [*good, *faulty]),
        "effects": verdicts.effect_counts(pipeline, [*good, *faulty]),
        "bad_inputs": judged,
        "live_run_rejections": len(live.get("rejected_messages") or []),
        "crashes": json.loads((chaos / "supervisor.json").read_text()) if (chaos / "supervisor.json").exists() else {},
        "worst_moment_crashes": faults.fired(chaos),
    }


def pipeline_now() -> Any:
    from cd4ml.events import now

    return now()


def _outage(
    pipeline: Pipeline,
    chaos: Path,
    service: str,
    milestone: str | None,
    run_ids: list[str],
    hold: float | None,
    timeout: float,
) -> dict[str, Any]:
    """Take ``service`` down when a run reaches ``milestone`` (None: now); up after ``hold`` s (None: when the runs
    ended)."""
    deadline = time.monotonic() + timeout
    while milestone is not None and time.monotonic() < deadline:
        if any(milestone in [e["type"] for e in r.get("events", [])] for r in pipeline.records(run_ids).values()):
            break
        time.sleep(0.2)
    faults.set_down(chaos, service, True)
    down_at = time.monotonic()
    if hold is not None:
        time.sleep(hold)
        faults.set_down(chaos, service, False)
    records = pipeline.wait(run_ids, timeout, poll=1.0)
    faults.set_down(chaos, service, False)
    return {
        "service": service,
        "down_s": round((hold if hold is not None else time.monotonic() - down_at), 1),
        "runs": {
            r: {"status": (records.get(r) or {}).get("status"), "error": (records.get(r) or {}).get("error")}
            for r in run_ids
        },
    }


def _services(options: argparse.Namespace) -> list[tuple[str, str, str]]:
    return [s for s in SERVICES if not options.service or s[0] in options.service]


def outages(pipeline: Pipeline, options: argparse.Namespace, chaos: Path, report: dict[str, Any]) -> None:
    results: list[dict[str, Any]] = []
    if "short" not in options.skip:
        threads = []
        for service, milestone, stage in _services(options):
            runs = [_request_twice(pipeline, GOOD) for _ in range(2)]

            def one(
                service: str = service, milestone: str = milestone, runs: list[str] = runs, stage: str = stage
            ) -> None:
                found = _outage(pipeline, chaos, service, milestone, runs, options.short_outage, 900)
                found.update(
                    kind="short", stage=stage, recovered=all(r["status"] == "succeeded" for r in found["runs"].values())
                )
                results.append(found)

            threads.append(threading.Thread(target=one, daemon=True))
            threads[-1].start()
        for thread in threads:
            thread.join()
        say(
            "short outages: "
            + ", ".join(f"{r['service']} {'recovered' if r['recovered'] else 'NOT recovered'}" for r in results)
        )
    if "long" not in options.skip:
        for service, _, stage in _services(options):
            # Down before the run is requested: no stage before ``stage`` needs the service, and a milestone
            # races the stage (submit_training had created its job within the millisecond data.fetched was seen).
            faults.set_down(chaos, service, True)
            run = _request_twice(pipeline, GOOD)
            started = time.monotonic()
            found = _outage(pipeline, chaos, service, None, [run], None, 900)
            error = found["runs"][run]["error"] or {}
            found.update(
                kind="long",
                stage=stage,
                ended_after_s=round(time.monotonic() - started, 1),
                recovered=found["runs"][run]["status"] == "failed"
                and error.get("stage") == stage
                and any(w in error.get("message", "").lower() for w in ("unavailable", "unreachable")),
            )
            results.append(found)
            say(
                f"long outage of {service}: run {found['runs'][run]['status']} after {found['ended_after_s']} s: "
                f"{error.get('message', '')[:160]}"
            )
    report["outages"] = results


def table(report: dict[str, Any]) -> tuple[str, str, bool]:
    storm = report.get("storm", {})
    outs = report.get("outages", [])
    runs = len(storm.get("runs", [])) + sum(len(o["runs"]) for o in outs)
    lost = len(storm.get("lost", [])) + sum(1 for o in outs if o["kind"] == "short" and not o["recovered"])
    dupes = len(storm.get("duplicates", [])) + len(report.get("outage_duplicates", []))
    bad = storm.get("bad_inputs", [])
    handled = sum(b["handled"] for b in bad)
    recovered = sum(o["recovered"] for o in outs)
    lines = [f"{'level':<8} {'bad input':<52} {'stage':<16} result", "-" * 100]
    lines += [
        f"{b['level']:<8} {b['kind']:<52} {b['stage']:<16} {'ok' if b['handled'] else 'NOT HANDLED'}: {b['found'][:120]}"
        for b in bad
    ]
    lines += ["", f"{'outage':<12} {'kind':<6} {'down s':>7}  result", "-" * 60]
    lines += [
        f"{o['service']:<12} {o['kind']:<6} {o['down_s']:>7}  {'ok' if o['recovered'] else 'NOT HANDLED'}"
        + "".join(
            f"; {r} {v['status']}: {str((v['error'] or {}).get('message', ''))[:100]}" for r, v in o["runs"].items()
        )
        for o in outs
    ]
    lines += [
        "",
        f"effects at the external systems (storm): {json.dumps(storm.get('effects', {}))}",
        f"crashes: {json.dumps(storm.get('crashes', {}))}",
        f"worst-moment crashes fired: {len(storm.get('worst_moment_crashes', []))}",
    ]
    lines += [f"LOST: {x}" for x in storm.get("lost", [])[:30]] + [
        f"DUPLICATE: {x}" for x in storm.get("duplicates", [])[:30]
    ]
    summary = (
        f"chaos: {runs} runs, {lost} lost, {dupes} duplicate effects, {handled}/{len(bad)} bad inputs handled, "
        f"{recovered}/{len(outs)} outages recovered"
    )
    passed = (
        lost == 0
        and dupes == 0
        and handled == len(bad)
        and recovered == len(outs)
        and bool(bad) == ("storm" not in report.get("skipped", []))
    )
    return "\n".join(lines), summary, passed


def main(argv: Sequence[str] | None = None) -> int:
    options = _options(argv)
    exit_on_sigterm()
    clock = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cd4ml-chaos-"))
    chaos = workdir / "chaos"
    chaos.mkdir()
    os.environ[faults.CHAOS_DIR_ENV] = str(chaos)
    folders = [models.make(workdir, GOOD)] + [
        models.make(workdir, f.name, f.fault, f.dockerfile) for f in models.MODEL_FAULTS
    ]
    report: dict[str, Any] = {"options": {k: str(v) for k, v in vars(options).items()}, "skipped": options.skip}
    try:
        with running(workdir, options.tick_seconds, extra=folders, supervised=True) as pipeline:
            _twin_subscriptions(pipeline)
            if "storm" not in options.skip:
                storm(pipeline, options, chaos, report)
            outages(pipeline, options, chaos, report)
            outage_runs = [r for o in report["outages"] for r in o["runs"]]
            records = pipeline.records(outage_runs) if outage_runs else {}
            report["outage_duplicates"] = (
                verdicts.duplicate_effects(pipeline, records, outage_runs) if outage_runs else []
            )
    finally:
        if options.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    text, summary, passed = table(report)
    report.update(duration_s=round(time.monotonic() - clock, 1), summary=summary, passed=passed)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(text)
    print(f"\nresults: {options.out}, {report['duration_s']:.0f} s")
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
