"""``cd4ml local up | env | down``: the local stack's subcommands, added to the ``cd4ml`` command as a plugin.

Registered in pyproject.toml under the ``cd4ml.cli`` entry point group, so the command (cd4ml_cli) never
imports the local stack, and the function archive never ships it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add ``local`` to the ``cd4ml`` command's subparsers."""
    local = sub.add_parser("local", help="the local stack: up, env, down")
    local.add_argument("action", choices=["up", "env", "down"])
    local.add_argument("--json", action="store_true", help="env: endpoints as JSON")
    local.add_argument("--tick-seconds", type=float, default=2.0, help="up: watch tick period (default 2)")
    local.set_defaults(func=command)


def _running() -> tuple[Path, dict[str, Any]] | None:
    """The running stack's state dir and state (stack.json), read without importing the stack's modules (they load
    every client library: seconds on a busy machine, for a command that only needs the endpoints)."""
    from local_emulator.common import processes

    root = Path(os.environ.get("CD4ML_STATE_DIR", ".cd4ml")).resolve()
    try:
        state: dict[str, Any] = json.loads((root / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    alive = any(processes.alive(int(pid)) for pid in (state.get("pids") or {}).values())
    return (root, state) if alive else None


def environment() -> dict[str, str] | None:
    """The running local stack's client environment, for a ``cd4ml`` without CD4ML_PROJECT; None when none runs."""
    running = _running()
    return {str(k): str(v) for k, v in (running[1].get("env") or {}).items()} if running else None


def log_dir() -> str | None:
    """The running local stack's log folder (its functions' JSON lines, for ``cd4ml logs``); None when none runs."""
    running = _running()
    return str(running[0] / "logs") if running else None


def push_model(folder: Path) -> str | None:
    """Register a model folder with the running local stack as production would have it after ``cd4ml model push``
    and ``terraform apply``: uploaded, its data seeded (``seed_data.py``), its canary pipeline on the Gate, its
    schedule on the scheduler. None when no stack runs (the command then pushes to the configured project)."""
    if _running() is None:
        return None
    from local_emulator import stack

    current = stack.current()
    return stack.push_model(current, folder)


def command(args: argparse.Namespace) -> int:
    from local_emulator import stack

    if args.action == "up":
        try:
            stack.up(tick_seconds=args.tick_seconds, say=lambda m: print(m, file=sys.stderr))
        except stack.AlreadyRunning as running:
            print(f"cd4ml: {running}", file=sys.stderr)
        return 0
    if args.action == "down":
        if not stack.down(say=lambda m: print(m, file=sys.stderr)):
            print("the local stack is not running", file=sys.stderr)
        return 0
    current = stack.current()
    if args.json:
        print(json.dumps({k: v for k, v in current.endpoints.items() if k != "topology"}, indent=2))
    else:
        for key, value in sorted(current.env.items()):
            print(f"export {key}={value}")
    return 0
