"""Benchmarks of the targets in docs/architecture.md, each measured as a ratio within one run on a private local stack.

``python -m benchmarks`` (or ``nox -s bench``): orchestration overhead per hop (``hops``), cold starts and
the clients each function imports (``coldstart``), and 100 concurrent runs against 10 (``concurrency``).
Opt-in: it needs the whole local stack and a few minutes, and it fails when a target is missed.
"""
