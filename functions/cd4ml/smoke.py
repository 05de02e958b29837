"""The smoke test of a serving image, run inside the image by its own Cloud Build build: stdlib only.

build_image copies this file into the build context as ``cd4ml_smoke.py`` and into ``cd4ml-smoke/`` beside the
golden file. Three build steps run it before ``images`` are pushed (pushed only "upon the successful completion of
all build steps", Artifacts.images): ``check`` in the image just built, started by ``docker run --network=none``
with only ``cd4ml-smoke/`` mounted (the model's code gets no network, so no metadata server and no credential);
``report`` and ``verdict`` in a fixed Python image cd4ml chooses, never the model's:

    python3 /cd4ml-smoke/cd4ml_smoke.py check --golden G.jsonl --model-sha256 SHA --min-agreement 0.9 \\
        --latency-ms 2000 [--port 8080] [--health-path /health] [--startup-seconds 60] [--abs-tolerance A] \\
        [--rel-tolerance R] --result R.json -- SERVER COMMAND...
    python3 cd4ml_smoke.py report R.json
    python3 cd4ml_smoke.py verdict R.json

``check`` starts the server, waits for /health, checks that it reports the model's sha256 (its
``model_sha256``), sends each golden request (``{"request": BODY, "expected": PART}``, one JSON object
a line) to ``POST /predict``, measures agreement and per-request latency, writes the result JSON to R and exits 0
whatever the verdict. ``report`` copies R (or a failed result saying none was written) to ``$BUILDER_OUTPUT/output``
(Cloud Build returns it in ``results.buildStepOutputs[i]``; "Only the first 50KB of data is stored",
Results.build_step_outputs) and exits 0, so the output is kept. ``verdict`` fails the build (exit 1) with the
reason when the result did not pass. cd4ml's on_build reads the reported result (``smoke_result``) to record
``smoke`` on the run and to name the failing check in ``image.failed``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHECKS = ("health", "sha256", "agreement", "latency")
#: This file: build_image copies it into the build context.
SCRIPT = os.path.abspath(__file__)
#: Cloud Build keeps 50 KB of a step's output; the result stays far below that (failures are capped).
MAX_FAILURES = 5
#: What ``report`` reads of a result: far more than a result takes, and within what Cloud Build keeps (50 KB).
MAX_RESULT = 48 * 1024
_MAX_TEXT = 300


@dataclass(frozen=True)
class Golden:
    """One golden request: the JSON body POSTed to /predict and the part of the response it must contain."""

    line: int
    request: Any
    expected: Any


def read_golden(text: str) -> list[Golden]:
    """Every golden request of a JSONL text (blank lines skipped); ValueError names every bad line."""
    found: list[Golden] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as bad:
            problems.append(f"line {number}: not JSON ({bad.msg})")
            continue
        if not isinstance(item, dict) or set(item) != {"request", "expected"}:
            problems.append(f'line {number}: expected an object with exactly "request" and "expected"')
            continue
        found.append(Golden(number, item["request"], item["expected"]))
    if not found and not problems:
        problems.append("no golden requests")
    if problems:
        raise ValueError("; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
    return found


#: Numbers agree within these by default (as good as exact for labels; a regression's predictions need more).
ABS_TOLERANCE = 1e-12
REL_TOLERANCE = 1e-9


def matches(expected: Any, actual: Any, abs_tol: float = ABS_TOLERANCE, rel_tol: float = REL_TOLERANCE) -> bool:
    """``actual`` contains ``expected``: objects by their expected keys, arrays element-wise, numbers within
    ``abs_tol`` or ``rel_tol`` (``math.isclose``: either suffices), anything else equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k], abs_tol, rel_tol) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(e, a, abs_tol, rel_tol) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual, rel_tol=rel_tol, abs_tol=abs_tol)
    return bool(expected == actual)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _http(method: str, url: str, body: Any, timeout: float) -> tuple[int, Any, float]:
    """(status, decoded JSON or raw text, milliseconds); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        return 0, str(error), (time.perf_counter() - started) * 1000
    elapsed = (time.perf_counter() - started) * 1000
    try:
        return status, json.loads(raw or b"null"), elapsed
    except ValueError:
        return status, raw.decode("utf-8", "replace"), elapsed


@dataclass(frozen=True)
class Options:
    """What ``check`` is asked to verify."""

    golden: list[Golden]
    model_sha256: str
    min_agreement: float
    latency_ms: float
    port: int = 8080
    health_path: str = "/health"
    startup_seconds: float = 60.0
    abs_tolerance: float = ABS_TOLERANCE
    rel_tolerance: float = REL_TOLERANCE


def check(options: Options, server_exited: Any = lambda: None, server_log: Any = lambda: "") -> dict[str, Any]:
    """Run the checks against a server on 127.0.0.1:port; ``server_exited()`` returns its exit code once it ended."""
    base = f"http://127.0.0.1:{options.port}"
    result: dict[str, Any] = {
        "passed": False,
        "checks": dict.fromkeys(CHECKS, False),
        "failed": [],
        "reason": "",
        "expected_sha256": options.model_sha256,
        "health_sha256": "",
        "requests": len(options.golden),
        "agreed": 0,
        "agreement": 0.0,
        "min_agreement": options.min_agreement,
        "latency_p50_ms": 0.0,
        "latency_max_ms": 0.0,
        "latency_budget_ms": options.latency_ms,
        "startup_ms": 0.0,
        "failures": [],
    }
    started = time.monotonic()
    health: Any = None
    while True:
        status, health, _ = _http("GET", base + options.health_path, None, timeout=2.0)
        if status == 200:
            break
        code = server_exited()
        if code is not None or time.monotonic() - started > options.startup_seconds:
            why = (
                f"the server exited with code {code} before {options.health_path} answered"
                if code is not None
                else f"{options.health_path} did not answer 200 within {options.startup_seconds:g} s "
                f"(last: {status or 'no answer'} {_short(str(health))})"
            )
            tail = _short(server_log())
            result["failed"] = list(CHECKS)
            result["reason"] = f"health: {why}" + (f"; server output: {tail}" if tail else "")
            return result
        time.sleep(0.2)
    result["startup_ms"] = round((time.monotonic() - started) * 1000, 1)
    result["checks"]["health"] = True
    reported = health.get("model_sha256", "") if isinstance(health, dict) else ""
    result["health_sha256"] = str(reported)[:64]
    result["checks"]["sha256"] = reported == options.model_sha256
    latencies: list[float] = []
    failures: list[str] = []
    for golden in options.golden:
        status, answer, elapsed = _http(
            "POST", base + "/predict", golden.request, timeout=max(5.0, 3 * options.latency_ms / 1000)
        )
        latencies.append(elapsed)
        if status == 200 and matches(golden.expected, answer, options.abs_tolerance, options.rel_tolerance):
            result["agreed"] += 1
        else:
            failures.append(
                f"line {golden.line}: expected {_short(json.dumps(golden.expected))}, "
                f"got {status or 'no answer'} {_short(json.dumps(answer))}"
                f" (tolerance abs {options.abs_tolerance:g}, rel {options.rel_tolerance:g})"
            )
        if elapsed > options.latency_ms:
            failures.append(f"line {golden.line}: {elapsed:.0f} ms > budget {options.latency_ms:g} ms")
    result["agreement"] = round(result["agreed"] / len(options.golden), 4) if options.golden else 0.0
    result["checks"]["agreement"] = result["agreement"] >= options.min_agreement
    result["latency_p50_ms"] = round(statistics.median(latencies), 1) if latencies else 0.0
    result["latency_max_ms"] = round(max(latencies), 1) if latencies else 0.0
    result["checks"]["latency"] = result["latency_max_ms"] <= options.latency_ms
    result["failures"] = failures[:MAX_FAILURES]
    result["failed"] = [name for name in CHECKS if not result["checks"][name]]
    result["passed"] = not result["failed"]
    result["reason"] = reason(result)
    return result


def reason(result: dict[str, Any]) -> str:
    """One line naming each failed check with its numbers ("" when every check passed)."""
    parts = []
    for name in result.get("failed", []):
        if name == "health":
            return str(result.get("reason") or "health: the server did not answer")
        if name == "sha256":
            parts.append(
                f"sha256: /health reports model_sha256 {result.get('health_sha256') or '(none)'!r}, "
                f"not the model's {result.get('expected_sha256')}"
            )
        elif name == "agreement":
            parts.append(
                f"agreement: {result.get('agreement', 0):.2f} < min_agreement {result.get('min_agreement')}"
                f" ({result.get('agreed')}/{result.get('requests')} golden requests agreed)"
            )
        elif name == "latency":
            parts.append(
                f"latency: max {result.get('latency_max_ms')} ms > budget {result.get('latency_budget_ms')} ms"
                f" (p50 {result.get('latency_p50_ms')} ms)"
            )
    return "; ".join(parts)


def _serve(command: Sequence[str], port: int, log: Any) -> subprocess.Popen[bytes]:
    """The server with PORT set, output to log; in the checker's process group, so that whatever stops the step
    (a build timeout or cancel signals the group) stops the server too."""
    return subprocess.Popen(
        list(command),
        env={**os.environ, "PORT": str(port)},
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL after 5 s."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5.0)


def _on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _tail(log: Any) -> str:
    log.seek(0)
    return " | ".join(log.read()[-2000:].decode("utf-8", "replace").strip().splitlines()[-5:])


def _write(result: dict[str, Any], path: str) -> None:
    text = json.dumps(result, separators=(",", ":"))
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    outputs = os.environ.get("BUILDER_OUTPUT")
    if outputs:
        os.makedirs(outputs, exist_ok=True)
        with open(os.path.join(outputs, "output"), "w", encoding="utf-8") as file:
            file.write(text)


def _report(path: str) -> None:
    """The result ``check`` wrote, to ``$BUILDER_OUTPUT/output`` (a failed result when there is none or it is not a
    JSON object: the server's container may have written anything there)."""
    try:
        with open(path, encoding="utf-8") as file:
            result = json.loads(file.read(MAX_RESULT))
        if not isinstance(result, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as bad:
        result = {
            "passed": False,
            "checks": dict.fromkeys(CHECKS, False),
            "failed": list(CHECKS),
            "reason": f"health: the smoke test left no result ({_short(str(bad))})",
        }
    outputs = os.environ.get("BUILDER_OUTPUT")
    if outputs:
        os.makedirs(outputs, exist_ok=True)
        with open(os.path.join(outputs, "output"), "w", encoding="utf-8") as file:
            file.write(json.dumps(result, separators=(",", ":")))
    print(json.dumps(result, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cd4ml_smoke.py", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("check")
    run.add_argument("--golden", required=True)
    run.add_argument("--model-sha256", required=True)
    run.add_argument("--min-agreement", type=float, required=True)
    run.add_argument("--latency-ms", type=float, required=True)
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--health-path", default="/health")
    run.add_argument("--startup-seconds", type=float, default=60.0)
    run.add_argument("--abs-tolerance", type=float, default=ABS_TOLERANCE)
    run.add_argument("--rel-tolerance", type=float, default=REL_TOLERANCE)
    run.add_argument("--result", required=True)
    run.add_argument("command", nargs="+")
    verdict = sub.add_parser("verdict")
    verdict.add_argument("result")
    report = sub.add_parser("report")
    report.add_argument("result")
    args = parser.parse_args(argv)
    if args.action == "report":
        _report(args.result)
        return 0
    if args.action == "verdict":
        with open(args.result, encoding="utf-8") as file:
            result = json.load(file)
        if result.get("passed") is True:
            print(
                f"smoke test passed: {result.get('agreed')}/{result.get('requests')} agreed, "
                f"p50 {result.get('latency_p50_ms')} ms, max {result.get('latency_max_ms')} ms"
            )
            return 0
        print(f"smoke test failed: {result.get('reason') or reason(result)}", file=sys.stderr)
        return 1
    try:
        with open(args.golden, encoding="utf-8") as file:
            golden = read_golden(file.read())
    except (OSError, ValueError) as bad:
        _write(
            {
                "passed": False,
                "checks": dict.fromkeys(CHECKS, False),
                "failed": ["golden"],
                "reason": f"golden: {args.golden}: {_short(str(bad))}",
            },
            args.result,
        )
        return 0
    options = Options(
        golden,
        args.model_sha256,
        args.min_agreement,
        args.latency_ms,
        args.port,
        args.health_path,
        args.startup_seconds,
        args.abs_tolerance,
        args.rel_tolerance,
    )
    signal.signal(signal.SIGTERM, _on_term)  # stop the server on the way out (the finally below)
    with tempfile.TemporaryFile() as log:
        proc = _serve(args.command, args.port, log)
        try:
            result = check(options, proc.poll, lambda: _tail(log))
        finally:
            _stop(proc)
    _write(result, args.result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
