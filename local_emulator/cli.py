"""``cd4ml local up | env | down``: the local stack's subcommands, added to the ``cd4ml`` command as a plugin.

Registered in pyproject.toml under the ``cd4ml.cli`` entry point group, so the command (cd4ml_cli) never
imports the local stack, and the function archive never ships it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add ``local`` to the ``cd4ml`` command's subparsers."""
    local = sub.add_parser("local", help="the local stack: up, env, down")
    local.add_argument("action", choices=["up", "env", "down"])
    local.add_argument("--json", action="store_true", help="env: endpoints as JSON")
    local.add_argument("--tick-seconds", type=float, default=2.0, help="up: watch tick period (default 2)")
    local.set_defaults(func=command)


def environment() -> dict[str, str] | None:
    """The running local stack's client environment, for a ``cd4ml`` without CD4ML_PROJECT; None when none runs."""
    from local_emulator.stack import Stack

    stack = Stack.load()
    return dict(stack.env) if stack is not None and stack.running() else None


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
