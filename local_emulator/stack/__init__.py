"""``cd4ml local up | env | down``: the whole chain on one machine, against real emulators.

Real where a real thing exists (Google's Pub/Sub and Firestore emulators, a GCS emulator, functions-
framework servers running the unchanged functions), an API-level stand-in where none does (Vertex AI).
Every process is started in its own session and recorded by pid in ``.cd4ml/stack.json``; ``down``
stops each process group and leaves nothing behind.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cd4ml import catalog
from cd4ml.errors import Cd4mlError
from local_emulator.common import processes
from local_emulator.pubsub.topology import plan
from local_emulator.stack.parts import gate_config as gate_config
from local_emulator.stack.parts import push_model as push_model
from local_emulator.stack.parts import start_gate as start_gate
from local_emulator.stack.state import ARTIFACT_BUCKET as ARTIFACT_BUCKET
from local_emulator.stack.state import DATA_BUCKET as DATA_BUCKET
from local_emulator.stack.state import FUNCTIONS_DIR as FUNCTIONS_DIR
from local_emulator.stack.state import GCLOUD_PLATFORM as GCLOUD_PLATFORM
from local_emulator.stack.state import LOCAL_TOKEN_ISSUER as LOCAL_TOKEN_ISSUER
from local_emulator.stack.state import PROJECT as PROJECT
from local_emulator.stack.state import REGION as REGION
from local_emulator.stack.state import REPO as REPO
from local_emulator.stack.state import STATE_FILE as STATE_FILE
from local_emulator.stack.state import AlreadyRunning as AlreadyRunning
from local_emulator.stack.state import Stack as Stack
from local_emulator.stack.state import StackError as StackError
from local_emulator.stack.state import _base_env as _base_env
from local_emulator.stack.state import _child_env as _child_env
from local_emulator.stack.state import _emulator_env as _emulator_env
from local_emulator.stack.state import _gate_client_certificate as _gate_client_certificate
from local_emulator.stack.state import _gate_key_file as _gate_key_file
from local_emulator.stack.state import _http_ok as _http_ok
from local_emulator.stack.state import _settings as _settings
from local_emulator.stack.state import approval_policy_file as approval_policy_file
from local_emulator.stack.state import client_env as client_env
from local_emulator.stack.state import push_routes as push_routes
from local_emulator.stack.state import stage_env as stage_env
from local_emulator.stack.state import state_dir as state_dir
from local_emulator.stack.state import stop as stop


def up(
    models: list[Path] | None = None,
    *,
    scheduler: bool = True,
    tick_seconds: float = 2.0,
    say: Callable[[str], None] = print,
    supervised: bool = False,
    functions: bool = True,
) -> Stack:
    """Start everything, wait until ready, create topics, subscriptions and buckets, push the models.

    ``supervised``: the functions run behind ``local_emulator.stack.supervisor``, which restarts a crashed instance.
    ``functions=False``: the emulators and stand-ins only (no function, model, scheduler or web view): what tests
    that call handlers in-process need (tests/contract).
    """
    root = state_dir()
    existing = Stack.load(root)
    if existing is not None and existing.running():
        raise AlreadyRunning(f"the local stack is already running (state in {root}); `cd4ml local down` stops it")
    reset(root)
    stack = Stack(root=root)
    started = time.monotonic()
    from local_emulator.stack.parts import (
        _apply_topology,
        _start_delivery,
        _start_functions,
        _start_scheduler,
        _start_services,
        _start_ui,
    )

    folders = usable_models(models if models is not None else default_models(), say) if functions else []
    try:
        _start_services(stack)
        _apply_topology(stack, plan(catalog.load()))
        _start_delivery(stack, folders)
        say(f"emulators and stand-ins ready in {time.monotonic() - started:.1f} s")
        if not functions:
            stack.env = client_env(stack)
            stack.save()
            return stack
        _start_functions(stack, supervised)
        say(f"functions ready in {time.monotonic() - started:.1f} s")
        for folder in folders:
            pushed = push_model(stack, folder)
            say(f"model {pushed} pushed")
        if scheduler:
            _start_scheduler(stack, tick_seconds, folders)
        say(f"web view (cd4ml ui): {_start_ui(stack)}")
    except BaseException:
        down(stack)
        raise
    stack.env = client_env(stack)
    stack.save()
    say(f"local stack up in {time.monotonic() - started:.1f} s; state in {root}")
    return stack


#: What a stopped stack leaves in its state dir that the next ``up`` must not inherit: it all belonged to emulators
#: whose data died with them (Pub/Sub, Firestore and Cloud Storage keep theirs in memory). The relay's routes named
#: the old functions' ports (the relay would push there forever); job, build and execution records, registry blobs
#: and aliases, received notices and the token key would answer a new run's recovery queries (or sign its tokens)
#: with an old stack's facts. secrets/ stays: the per-model webhook keys are kept across restarts, as Secret Manager
#: keeps them; each channel's URL there is written again by every push.
_STACK_STATE = (
    STATE_FILE,
    "logs",
    "pubsub-push.json",
    "pubsub-push.tmp",
    "supervisor.json",
    "gate",
    "notify",
    "vertex",
    "registry",
    "scheduler",
    "iam",
)
#: Cloud Build's image storage is kept: it holds base images only (the stand-in clears leftover containers at start).
_BUILD_KEPT = "containers"


def reset(root: Path) -> None:
    """Clear the state a stopped stack left in ``root`` (never called while one runs); caches are kept."""
    for name in _STACK_STATE:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    builds = root / "cloudbuild"
    if builds.is_dir():
        for entry in builds.iterdir():
            if entry.name == _BUILD_KEPT:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def usable_models(folders: Sequence[Path], say: Callable[[str], None]) -> list[Path]:
    """The model folders whose manifest is valid; each other one is reported (every problem, and the fix) and
    skipped, so one bad manifest under examples/ costs its own model only, not the stack."""
    from cd4ml_models import folder as models

    usable = []
    for folder in folders:
        try:
            models.read(folder)
        except Cd4mlError as bad:
            say(f"model folder {folder} skipped: {bad}; fix it and run `cd4ml model push {folder}`")
        else:
            usable.append(folder)
    return usable


def default_models() -> list[Path]:
    """Every folder under examples/ that holds a manifest.yaml."""
    return sorted(p.parent for p in (REPO / "examples").glob("*/manifest.yaml"))


def down(stack: Stack | None = None, say: Callable[[str], None] = print) -> bool:
    """Stop every process the stack started, by pid; False when nothing was running."""
    stack = stack or Stack.load()
    if stack is None:
        return False
    # stack.json is the truth (every start and stop saves it): another process may have restarted a part since the
    # caller's copy was read (`cd4ml model push` restarts the Gate), and a stale pid may belong to someone else now.
    on_disk = Stack.load(stack.root)
    pids = on_disk.pids if on_disk is not None else stack.pids
    # Functions and the scheduler first, so nothing publishes into emulators that are going away.
    first = [pid for name, pid in pids.items() if name.startswith(("fn-", "scheduler"))]
    processes.stop_all(first)
    processes.stop_all(pid for name, pid in pids.items() if not name.startswith(("fn-", "scheduler")))
    (stack.root / STATE_FILE).unlink(missing_ok=True)
    say(f"stopped {len(pids)} processes")
    return True


def current() -> Stack:
    """The running stack; StackError when there is none."""
    stack = Stack.load()
    if stack is None or not stack.running():
        raise StackError("the local stack is not running: start it with `cd4ml local up`")
    return stack
