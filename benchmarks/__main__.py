"""``python -m benchmarks``: measure the targets in docs/architecture.md on a private local stack; exit 1 when one is missed.

The readable table goes to stdout, progress to stderr, every figure to ``benchmarks/results/latest.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import cache, coldstart, concurrency, hops, ui
from benchmarks.pipeline import exit_on_sigterm, running, say
from benchmarks.report import Report, Section

RESULTS = Path(__file__).with_name("results") / "latest.json"
TARGETS = ("coldstart", "hops", "runs", "cache", "ui")


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only", choices=TARGETS, action="append", help="measure only this target (repeatable; default: all)"
    )
    parser.add_argument(
        "--cold-passes",
        type=int,
        default=3,
        help="fresh servers per stage whose cold start is timed; the median is checked (default 3)",
    )
    parser.add_argument("--hops", type=int, default=80, help="bare hops sampled (default 80)")
    parser.add_argument(
        "--sequential-runs",
        type=int,
        default=32,
        help="runs, one after the other, whose hops are measured (default 32)",
    )
    parser.add_argument("--baseline-runs", type=int, default=10, help="runs of the baseline batch (default 10)")
    parser.add_argument(
        "--baseline-batches", type=int, default=2, help="baseline batches, pooled: one batch of 10 is noisy (default 2)"
    )
    parser.add_argument("--runs", type=int, default=100, help="runs of the large batch (default 100)")
    parser.add_argument("--batch-timeout", type=float, default=300.0, help="seconds a batch may take (default 300)")
    parser.add_argument(
        "--tick-seconds",
        type=float,
        default=1.0,
        help="watch tick period (production: 60; the local stack's tests: 1; default 1)",
    )
    parser.add_argument(
        "--ui-runs", type=int, default=10_000, help="runs in the ledger for the web view (default 10000)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (stack state and logs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = _options(argv)
    # A SIGTERM (nox or CI giving up) unwinds like Ctrl-C, so the stack's processes are stopped by pid.
    exit_on_sigterm()
    wanted = options.only or list(TARGETS)
    started, clock = datetime.now(UTC), time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cd4ml-bench-"))
    sections: list[Section] = []
    try:
        with running(workdir, options.tick_seconds) as pipeline:
            if "coldstart" in wanted:
                sections.append(coldstart.measure(pipeline, workdir, options.cold_passes))
            if "hops" in wanted:
                sections.append(hops.measure(pipeline, workdir, options.hops, options.sequential_runs))
            if "runs" in wanted:
                sections.append(
                    concurrency.measure(
                        pipeline, options.baseline_runs, options.runs, options.batch_timeout, options.baseline_batches
                    )
                )
            if "cache" in wanted:
                sections.append(cache.measure(pipeline, options.batch_timeout))
            if "ui" in wanted:  # last: it adds 10,000 finished runs to the ledger
                sections.append(ui.measure(pipeline, options.ui_runs))
    finally:
        if options.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = Report(
        started_at=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        duration_s=round(time.monotonic() - clock, 1),
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),
        },
        options={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        sections=tuple(sections),
    )
    report.write(options.out)
    print(report.table())
    print(f"\nresults: {options.out}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
