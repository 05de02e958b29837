"""Target 2: every function serves its first event within 1 s of its process starting (2 s if it must load
``aiplatform_v1``), and no function imports a client it does not use.

Cold start: for each stage, ``python -m functions_framework --target STAGE --source functions/main.py
--signature-type cloudevent`` is started with the stage's environment (the local stack's ``stage_env``),
beside the running stack; as soon as its port opens, a realistic push body (``scenarios``) is POSTed to
``/projects/P/topics/TOPIC``. Measured: process start (just before exec) → the HTTP response, which must be
2xx. The limit is 2 s for the stages whose catalog ``uses`` lists ``vertex``, else 1 s.

A sample that is not answered 2xx misses the target whatever its time: the event was not served (Pub/Sub
would redeliver it); the exception the server logged is reported.

Clients: in another fresh process per stage (``_coldstart_probe.py``), the app is created with
functions-framework's ``create_app`` and a second fresh scenario is served through its test client; then
each client library's module is looked up in ``sys.modules`` and compared with the catalog's ``uses``.
"""

from __future__ import annotations

import http.client
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_emulator import stack as local
from local_emulator.common import processes

from benchmarks.pipeline import Pipeline, say
from benchmarks.report import Check, Section
from benchmarks.scenarios import Probe, Scenarios
from cd4ml import catalog

TARGET = "cold start"
LIMIT_S = 1.0
VERTEX_LIMIT_S = 2.0
PROBE = Path(__file__).with_name("_coldstart_probe.py")
MAIN = local.FUNCTIONS_DIR / "main.py"
#: The module each client of the catalog's ``uses`` lists lives in.
CLIENT_MODULES = {
    "firestore": "google.cloud.firestore",
    "pubsub": "google.cloud.pubsub_v1",
    "storage": "google.cloud.storage",
    "vertex": "google.cloud.aiplatform_v1",
    "cloudbuild": "google.cloud.devtools.cloudbuild_v1",
    "secretmanager": "google.cloud.secretmanager",
}


@dataclass(frozen=True)
class Served:
    """A stage's first event through a fresh functions-framework server."""

    stage: str
    port_s: float
    served_s: float
    status: int
    run_id: str
    failure: str = ""
    """When the status is not 2xx: the exception the server logged."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Loaded:
    """A stage's first event in a fresh process, in-process, and the client modules it left loaded."""

    stage: str
    status: int
    import_s: float
    event_s: float
    loaded: tuple[str, ...]


def serve_first_event(pipeline: Pipeline, probe: Probe, workdir: Path, name: str) -> Served:
    """Start the stage's server, POST the probe once the port opens; time process start → response."""
    port = processes.free_port()
    argv = [
        sys.executable,
        "-m",
        "functions_framework",
        "--target",
        probe.stage,
        "--source",
        str(MAIN),
        "--signature-type",
        "http" if catalog.load().stage(probe.stage).http else "cloudevent",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = local.stage_env(pipeline.stack, probe.stage)
    body = json.dumps(probe.body).encode()
    started = time.monotonic()
    pid = processes.start(name, argv, env=env, log_dir=workdir / "logs", cwd=local.REPO)
    try:
        while not processes.port_open(port):
            if not processes.alive(pid) or time.monotonic() - started > 60:
                raise RuntimeError(f"{probe.stage} did not open its port (log: {workdir / 'logs'})")
            time.sleep(0.002)
        opened = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", probe.path, body, {"Content-Type": "application/json", **probe.headers})
        response = connection.getresponse()
        response.read()
        served = time.monotonic()
        connection.close()
    finally:
        processes.stop(pid)
    failure = "" if 200 <= response.status < 300 else _logged_error(workdir / "logs" / f"{name}.log")
    return Served(probe.stage, opened - started, served - started, response.status, probe.run_id, failure)


def _logged_error(log: Path) -> str:
    """The last exception line of a server log (a traceback's last line), or where to look."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if re.match(r"^[A-Za-z_][\w.]*: ", line)]
    return lines[-1].strip() if lines else f"see {log}"


def loaded_clients(pipeline: Pipeline, probe: Probe, workdir: Path) -> Loaded:
    """Serve the probe in a fresh process through ``create_app``; which client modules it imported."""
    request, result = workdir / f"probe-{probe.stage}.json", workdir / f"probe-{probe.stage}.result.json"
    request.write_text(
        json.dumps(
            {
                "stage": probe.stage,
                "source": str(MAIN),
                "path": probe.path,
                "body": probe.body,
                "headers": dict(probe.headers),
                "signature": "http" if catalog.load().stage(probe.stage).http else "cloudevent",
                "modules": CLIENT_MODULES,
            }
        )
    )
    result.unlink(missing_ok=True)
    log = workdir / "logs" / f"probe-{probe.stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        subprocess.run(
            [sys.executable, "-P", str(PROBE), str(request), str(result)],
            env=local.stage_env(pipeline.stack, probe.stage),
            cwd=local.REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=True,
        )
    found: dict[str, Any] = json.loads(result.read_text())
    loaded = tuple(client for client, present in found["loaded"].items() if present)
    return Loaded(probe.stage, int(found["status"]), float(found["import_s"]), float(found["event_s"]), loaded)


def measure(pipeline: Pipeline, workdir: Path, passes: int) -> Section:
    """``passes`` timed passes over every stage, then the clients pass; the ticks held throughout.

    After each timed probe the bench waits until what it set going came to rest, so the next cold start
    does not share the two CPUs with a training job or a build.
    """
    stages = catalog.load().stages
    served: dict[str, list[Served]] = {s.name: [] for s in stages}
    loaded: list[Loaded] = []
    scenarios: list[Scenarios] = []
    with pipeline.ticker.held():
        for n in range(passes):
            timing = Scenarios(pipeline)
            scenarios.append(timing)
            for stage in stages:
                served[stage.name].append(
                    serve_first_event(pipeline, timing.probe(stage.name), workdir, f"cold-{stage.name}-{n + 1}")
                )
                timing.settle(stage.name)
            say(
                f"cold start: pass {n + 1}: "
                + ", ".join(f"{s.name} {served[s.name][-1].served_s:.2f} s" for s in stages)
            )
        clients = Scenarios(pipeline)
        scenarios.append(clients)
        for stage in stages:
            loaded.append(loaded_clients(pipeline, clients.probe(stage.name), workdir))
    going_on = [r for s in scenarios for r in s.opened if r not in s.left_open]
    ended = pipeline.wait(going_on, timeout=120)
    unfinished = [r for r in going_on if (ended.get(r) or {}).get("status") != "succeeded"]

    checks: list[Check] = []
    notes: list[str] = []
    data: dict[str, Any] = {}
    for stage, probe in zip(stages, loaded, strict=True):
        uses = set(stage.uses)
        limit = VERTEX_LIMIT_S if "vertex" in uses else LIMIT_S
        samples = served[stage.name]
        median = statistics.median(s.served_s for s in samples)
        statuses = sorted({s.status for s in samples})
        ok = median <= limit and all(s.ok for s in samples)
        checks.append(
            Check(
                TARGET,
                f"{stage.name}: first event served",
                f"{median:.2f} s (HTTP {'/'.join(map(str, statuses))})",
                f"≤ {limit:.0f} s",
                ok,
                value=median,
                limit_value=limit,
            )
        )
        extra = sorted(set(probe.loaded) - uses)
        unused = sorted(uses & set(CLIENT_MODULES) - set(probe.loaded))
        checks.append(
            Check(
                TARGET,
                f"{stage.name}: clients imported",
                ", ".join(probe.loaded) or "none",
                "⊆ " + ", ".join(sorted(uses)),
                not extra and 200 <= probe.status < 300,
            )
        )
        notes.append(
            f"{stage.name + ':':16s} served "
            + ", ".join(f"{s.served_s:.2f}" for s in samples)
            + " s (port open "
            + ", ".join(f"{s.port_s:.2f}" for s in samples)
            + " s); in-process: "
            f"import {probe.import_s:.2f} s + first event {probe.event_s:.2f} s (HTTP {probe.status})"
            + (f"; NOT USED but imported: {', '.join(extra)}" if extra else "")
            + (f"; declared, not loaded on this path: {', '.join(unused)}" if unused else "")
        )
        notes += [
            f"  pass {n}: HTTP {s.status} after {s.served_s:.2f} s (run {s.run_id}): {s.failure}"
            for n, s in enumerate(samples, start=1)
            if not s.ok
        ]
        data[stage.name] = {
            "served_median_s": round(median, 3),
            "served_s": [round(s.served_s, 3) for s in samples],
            "port_open_s": [round(s.port_s, 3) for s in samples],
            "status": statuses,
            "limit_s": limit,
            "uses": sorted(uses),
            "loaded": list(probe.loaded),
            "probe_status": probe.status,
            "probe_import_s": round(probe.import_s, 3),
            "probe_event_s": round(probe.event_s, 3),
            "run_ids": [s.run_id for s in samples],
            "failures": [s.failure for s in samples if not s.ok],
        }
    if unfinished:
        notes.append(f"runs the probes started that did not succeed within 120 s: {', '.join(unfinished)}")
    return Section(
        target=TARGET,
        definition=(
            f"median over {passes} fresh functions-framework servers per stage of process start → HTTP "
            "response to a realistic first push; clients = Google client modules in sys.modules after a "
            "first event in another fresh process, against the catalog's uses"
        ),
        checks=tuple(checks),
        notes=tuple(notes),
        data={"stages": data, "unfinished_runs": unfinished},
    )
