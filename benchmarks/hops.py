"""Target 1: orchestration overhead per hop, against a bare republish hop through the same Pub/Sub emulator.

A hop is measured the same way on both sides, from the moment an event is made to the moment the next
one is made, so it holds the upstream publish, the push delivery and the downstream handler:

- bare: a functions-framework function (``_bare_hop.py``) behind two push subscriptions stamps a message and
  republishes it to the second topic; the second push brings it back, and it is stamped again on arrival.
  That is a hop as a stage sees one (made in a handler, published, pushed to the next function) with the
  same framework, publisher and emulator, and nothing else. See ``_bare_hop.py`` for why the first leg
  waits a random moment before stamping.
- cd4ml: consecutive events of real runs, from their ``time`` in the run ledger (ce-time, set when a stage
  makes the event, before it records it and publishes it). The orchestration hops are the two whose stage
  does no heavy external work: data.fetched → training.submitted (submit_training: a ledger claim, a
  CustomJob create at the local Vertex, the result, the event) and training.completed → evaluation.*
  (evaluate: a ledger read, metrics.json from GCS, the champion, the gate, the event). The runs are of
  ``digits-bench-gated``, whose gate fails by design (evaluation.failed costs evaluate what
  evaluation.passed does), so a run ends in ~2 s instead of ~4.5 s with a build and a canary, and twice
  as many samples fit the budget. They are requested one after the other, so nothing else competes for
  the two CPUs; the first one only warms up.

Both kinds of hop are pushed by the stack's push relay (``local_emulator/pubsub/push.py``, long-polling pulls
on the emulator); that delivery is most of a hop and most of its noise. The check compares the p50 of the
pooled orchestration hops with the p50 of the bare hop; a bootstrap 90% interval of that ratio is
reported beside it, because the noise is of the order of the overhead being measured.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from local_emulator import stack as local
from local_emulator.common import processes
from local_emulator.pubsub import push as pubsub_push

from benchmarks.pipeline import GATED_MODEL, Pipeline, say
from benchmarks.report import Check, Section, Summary, percentile
from cd4ml import catalog
from cd4ml.events import (
    DATA_FETCHED,
    EVALUATION_FAILED,
    RUN_REQUESTED,
    TRAINING_COMPLETED,
    TRAINING_SUBMITTED,
    parse_time,
)

TARGET = "hop overhead"
LIMIT = 1.15
BARE_SOURCE = Path(__file__).with_name("_bare_hop.py")
#: The hops whose stage is cd4ml's orchestration and little else: the ones the target is checked on.
ORCHESTRATION_HOPS = {
    "submit_training": (DATA_FETCHED, TRAINING_SUBMITTED),
    "evaluate": (TRAINING_COMPLETED, EVALUATION_FAILED),
}
#: Hops reported for context: their stage does external work (the snapshot: GCS reads, a hash, an upload).
OTHER_HOPS = {"fetch_data (snapshot)": (RUN_REQUESTED, DATA_FETCHED)}
_WARM_UP = 3


def bare_hops(pipeline: Pipeline, samples: int, workdir: Path, seed: int = 7) -> list[float]:
    """Milliseconds of each bare hop (leg 2 of ``_bare_hop.py``): made in a push handler → published → pushed
    to the next function, through the stack's Pub/Sub emulator."""
    from google.cloud import pubsub_v1

    project = pipeline.settings.project
    publisher = pipeline.bus.publisher
    subscriber = pubsub_v1.SubscriberClient()
    first, second, out = (publisher.topic_path(project, f"bench-hop-{n}") for n in ("1", "2", "out"))
    for topic in (first, second, out):
        publisher.create_topic(name=topic)
    record = subscriber.subscription_path(project, "bench-hop-record")
    subscriber.create_subscription(request={"name": record, "topic": out})
    port = processes.free_port()
    env = pipeline.process_env() | {"BENCH_HOP_SECOND": second, "BENCH_HOP_OUT": out}
    pid = processes.start(
        "bench-bare-hop",
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            "hop",
            "--source",
            str(BARE_SOURCE),
            "--signature-type",
            "cloudevent",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        log_dir=workdir / "logs",
        cwd=local.REPO,
    )
    try:
        processes.wait_until(lambda: processes.port_open(port), what="the bare hop function", timeout=30, pid=pid)
        # Pushed the way the stack's stages are (local_emulator/pubsub/push.py), so both sides wait for the same
        # delivery.
        delivery = catalog.load().delivery
        routes = []
        for topic in (first, second):
            name = topic.rsplit("/", 1)[1]
            subscription = subscriber.subscription_path(project, f"{name}-push")
            subscriber.create_subscription(
                request={"name": subscription, "topic": topic, "ack_deadline_seconds": delivery.ack_deadline_seconds}
            )
            routes.append(
                pubsub_push.Route(
                    subscription=subscription,
                    endpoint=f"http://127.0.0.1:{port}/projects/{project}/topics/{name}",
                    minimum_backoff_seconds=delivery.minimum_backoff_seconds,
                    maximum_backoff_seconds=delivery.maximum_backoff_seconds,
                    ack_deadline_seconds=delivery.ack_deadline_seconds,
                )
            )
        pubsub_push.add_routes(local.push_routes(pipeline.stack), routes)
        rng = random.Random(seed)
        total = samples + _WARM_UP
        for i in range(total):
            time.sleep(rng.uniform(0.15, 0.25))
            publisher.publish(first, b"{}", **{"bench-hop": str(i), "bench-leg": "1"}).result(30)
        stamps = _collect(subscriber, record, total)
    finally:
        processes.stop(pid)
    missing = total - len(stamps)
    if missing:
        raise RuntimeError(f"{missing} of {total} bare hops never came back (log: {workdir / 'logs'})")
    return [(stamps[i]["bench-t2"] - stamps[i]["bench-t1"]) * 1000 for i in sorted(stamps) if i >= _WARM_UP]


def _collect(subscriber: Any, subscription: str, count: int, timeout: float = 30.0) -> dict[int, dict[str, float]]:
    found: dict[int, dict[str, float]] = {}
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": 1000}, timeout=10)
        for received in response.received_messages:
            attributes = received.message.attributes
            found[int(attributes["bench-hop"])] = {k: float(attributes[k]) for k in ("bench-t1", "bench-t2")}
        if response.received_messages:
            subscriber.acknowledge(
                request={"subscription": subscription, "ack_ids": [r.ack_id for r in response.received_messages]}
            )
    return found


def run_hops(records: list[dict[str, Any]], hops: dict[str, tuple[str, str]]) -> dict[str, list[float]]:
    """Milliseconds between the two events of each hop, per hop, over the runs that have both."""
    out: dict[str, list[float]] = {name: [] for name in hops}
    for run in records:
        times = {e["type"]: parse_time(e["time"]) for e in run.get("events", [])}
        for name, (first, second) in hops.items():
            if first in times and second in times:
                out[name].append((times[second] - times[first]).total_seconds() * 1000)
    return out


def sequential_runs(pipeline: Pipeline, count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    """``count`` runs of the gated model one after the other (after one to warm up); their final records."""
    records = []
    for n in range(count + 1):
        [run_id] = pipeline.request(1, GATED_MODEL)
        run = pipeline.wait([run_id], timeout, poll=0.1).get(run_id, {})
        events: list[dict[str, str]] = run.get("events", [])
        last = max(events, key=lambda e: e["time"])["type"] if events else None
        if run.get("status") != "failed" or last != EVALUATION_FAILED:
            raise RuntimeError(
                f"run {run_id} of {GATED_MODEL} should end at its gate: {run.get('status')}, "
                f"last event {last}, error {run.get('error')}"
            )
        if n:
            records.append(run)
    return records


def ratio_interval(cd4ml: list[float], bare: list[float], rounds: int = 2000, seed: int = 7) -> tuple[float, float]:
    """A bootstrap 90% interval of p50(cd4ml) / p50(bare)."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(cd4ml, k=len(cd4ml))) / statistics.median(rng.choices(bare, k=len(bare)))
        for _ in range(rounds)
    )
    return percentile(ratios, 5), percentile(ratios, 95)


def measure(pipeline: Pipeline, workdir: Path, samples: int, runs: int) -> Section:
    """The hop section: bare and cd4ml hops, and the check of their p50 ratio."""
    say(f"hops: {samples} bare hops")
    bare_ms = bare_hops(pipeline, samples, workdir)
    bare = Summary.of(bare_ms)
    say(f"hops: {runs} sequential runs of {GATED_MODEL}")
    records = sequential_runs(pipeline, runs)
    orchestration = run_hops(records, ORCHESTRATION_HOPS)
    other = run_hops(records, OTHER_HOPS)
    pooled_ms = [v for values in orchestration.values() for v in values]
    pooled = Summary.of(pooled_ms)
    ratio = pooled.p50 / bare.p50
    low, high = ratio_interval(pooled_ms, bare_ms)
    check = Check(
        TARGET,
        "cd4ml hop p50 / bare hop p50",
        f"{ratio:.2f} ({pooled.p50:.0f} / {bare.p50:.0f} ms)",
        f"≤ {LIMIT:.2f}",
        ratio <= LIMIT,
        value=ratio,
        limit_value=LIMIT,
    )
    notes = [
        f"ratio {ratio:.2f}, bootstrap 90% interval {low:.2f}–{high:.2f}; ratio of means {pooled.mean / bare.mean:.2f}",
        f"bare hop:              {bare.text('ms')}",
        f"cd4ml orchestration:   {pooled.text('ms')}",
    ]
    notes += [f"  {name + ':':21s}{Summary.of(v).text('ms')}" for name, v in orchestration.items()]
    notes += ["other hop (context, not checked; its stage does external work):"]
    notes += [f"  {name + ':':32s}{Summary.of(v).text('ms')}" for name, v in other.items()]
    return Section(
        target=TARGET,
        definition=(
            "p50 of the orchestration hops (data.fetched→training.submitted, training.completed→"
            f"evaluation.failed; ledger event times of {runs} sequential runs of {GATED_MODEL}) over the "
            "p50 of a bare handler→publish→push→handler hop through the same emulator"
        ),
        checks=(check,),
        notes=tuple(notes),
        data={
            "bare_ms": _raw(bare),
            "bare_samples_ms": [round(v, 2) for v in bare_ms],
            "orchestration_ms": orchestration,
            "other_ms": other,
            "pooled": _raw(pooled),
            "ratio": ratio,
            "ratio_interval_90": [low, high],
            "runs": [r["run_id"] for r in records],
        },
    )


def _raw(summary: Summary) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in vars(summary).items()}
