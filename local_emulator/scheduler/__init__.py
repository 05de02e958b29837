"""Local stand-in for Cloud Scheduler: publishes what the Terraform-made jobs publish, when they would.

Per manifest, a ``run.requested`` message at each cron fire time; and the watch tick, every
``--tick-seconds`` (production: every minute). Messages carry Cloud Scheduler's static attributes
only (no ce-id, ce-time or ce-subject), exactly as the real jobs do. The manifests in ``--jobs-dir`` are read
again whenever the folder changes: a model pushed to the running stack gets its job, as ``terraform apply``
adds one in production.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from cd4ml import catalog, logs
from cd4ml.errors import Cd4mlError
from cd4ml.events import RUN_REQUESTED, WATCH_TICKED
from cd4ml.manifest import Manifest, loads


def scheduler_attributes(project: str, job: str, type_: str) -> dict[str, str]:
    """The static attributes a Cloud Scheduler job sets on its Pub/Sub message."""
    return {
        "ce-specversion": "1.0",
        "ce-type": type_,
        "content-type": "application/json",
        "ce-source": f"//cloudscheduler.googleapis.com/projects/{project}/locations/local/jobs/{job}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--project", required=True)
    parser.add_argument("--manifest", action="append", default=[], type=Path)
    parser.add_argument("--jobs-dir", type=Path, help="a folder of manifests (MODEL.yaml), read again on change")
    parser.add_argument("--tick-seconds", type=float, default=60.0)
    args = parser.parse_args()
    logs.configure()
    log = logs.get("scheduler")
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    manifests: list[Manifest] = [loads(p.read_text(), origin=str(p)) for p in args.manifest]
    next_fire = {m.name: _next(m, datetime.now(UTC)) for m in manifests}
    jobs_seen = -1.0
    tick_topic = publisher.topic_path(args.project, catalog.topic_id(WATCH_TICKED))
    run_topic = publisher.topic_path(args.project, catalog.topic_id(RUN_REQUESTED))
    next_tick = time.monotonic()
    while not stop.is_set():
        if time.monotonic() >= next_tick:
            publisher.publish(tick_topic, b"{}", **scheduler_attributes(args.project, "cd4ml-watch-tick", WATCH_TICKED))
            next_tick = time.monotonic() + args.tick_seconds
        now = datetime.now(UTC)
        if args.jobs_dir is not None and args.jobs_dir.is_dir() and args.jobs_dir.stat().st_mtime != jobs_seen:
            jobs_seen = args.jobs_dir.stat().st_mtime
            manifests, next_fire = _jobs(args.manifest, args.jobs_dir, manifests, next_fire, now, log)
        for m in manifests:
            if now >= next_fire[m.name]:
                data = json.dumps({"model": m.name, "trigger": "schedule"}).encode()
                publisher.publish(
                    run_topic, data, **scheduler_attributes(args.project, f"cd4ml-{m.name}", RUN_REQUESTED)
                )
                log.info(f"scheduled run of {m.name} requested", extra={"model": m.name})
                next_fire[m.name] = _next(m, now)
        stop.wait(min(0.5, args.tick_seconds))


def _jobs(
    fixed: list[Path], folder: Path, current: list[Manifest], fires: dict[str, datetime], now: datetime, log: Any
) -> tuple[list[Manifest], dict[str, datetime]]:
    """The jobs: the fixed manifests and every valid one in ``folder`` (a job whose schedule is unchanged keeps its
    next fire time; an invalid file is logged and left out)."""
    kept = {m.name: m for m in current}
    found: dict[str, Manifest] = {}
    for path in [*fixed, *sorted(folder.glob("*.yaml"))]:
        try:
            manifest = loads(path.read_text(), origin=str(path))
        except (OSError, Cd4mlError) as bad:
            log.warning(f"job not scheduled: {bad}", extra={"path": str(path)})
            continue
        found[manifest.name] = manifest
    next_fire = {}
    for name, manifest in found.items():
        same = name in kept and (kept[name].schedule, kept[name].time_zone) == (manifest.schedule, manifest.time_zone)
        next_fire[name] = fires[name] if same and name in fires else _next(manifest, now)
        if not same:
            log.info(f"job cd4ml-{name} scheduled: {manifest.schedule!r} {manifest.time_zone}", extra={"model": name})
    return list(found.values()), next_fire


def _next(manifest: Manifest, after: datetime) -> datetime:
    fire: datetime = croniter(manifest.schedule, after.astimezone(ZoneInfo(manifest.time_zone))).get_next(datetime)
    return fire.astimezone(UTC)
