"""``cd4ml local up | env | down``: the whole chain on one machine, against real emulators.

Real where a real thing exists (Google's Pub/Sub and Firestore emulators, a GCS emulator, functions-
framework servers running the unchanged functions), an API-level stand-in where none does (Vertex AI).
Every process is started in its own session and recorded by pid in ``.cd4ml/stack.json``; ``down``
stops each process group and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cd4ml import catalog
from cd4ml.errors import Cd4mlError
from local_emulator import processes
from local_emulator.topology import plan

PROJECT = "cd4ml-local"
REGION = "us-central1"
DATA_BUCKET = "cd4ml-local-data"
ARTIFACT_BUCKET = "cd4ml-local-artifacts"
GCLOUD_PLATFORM = Path(os.environ.get("CD4ML_GCLOUD_PLATFORM", "/usr/lib/google-cloud-sdk/platform"))
REPO = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = REPO / "functions"
STATE_FILE = "stack.json"


def state_dir() -> Path:
    """Where the running stack keeps its pids, endpoints and logs (``CD4ML_STATE_DIR``, default ./.cd4ml)."""
    return Path(os.environ.get("CD4ML_STATE_DIR", ".cd4ml")).resolve()


class StackError(Cd4mlError, RuntimeError):
    """The local stack could not start or is not running (the ``cd4ml`` command prints it and exits 2)."""


class AlreadyRunning(StackError):
    """``up`` found a stack already running: it says so instead of starting a second one."""


@dataclass
class Stack:
    """What ``up`` started: pids by name, endpoints, the client environment."""

    root: Path
    pids: dict[str, int] = field(default_factory=dict)
    endpoints: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / STATE_FILE).write_text(
            json.dumps({"pids": self.pids, "endpoints": self.endpoints, "env": self.env}, indent=2)
        )

    @classmethod
    def load(cls, root: Path | None = None) -> Stack | None:
        root = root or state_dir()
        file = root / STATE_FILE
        if not file.exists():
            return None
        raw = json.loads(file.read_text())
        return cls(root=root, pids=raw["pids"], endpoints=raw["endpoints"], env=raw["env"])

    def running(self) -> bool:
        return any(processes.alive(pid) for pid in self.pids.values())

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> int:
        pid = processes.start(name, argv, env=env, log_dir=self.logs, cwd=REPO)
        self.pids[name] = pid
        self.save()
        return pid

    def wait(self, name: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
        processes.wait_until(check, what=name, timeout=timeout, pid=self.pids[name], log=self.logs / f"{name}.log")


def _http_ok(url: str, ca: Path | None = None) -> Callable[[], bool]:
    context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                return bool(response.status < 500)
        except OSError:
            return False

    return check


def _base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CD4ML_", "PUBSUB_EMULATOR", "FIRESTORE_EMULATOR", "STORAGE_EMULATOR", "GCE_METADATA"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child_env(
    stack: Stack, identity: str | None = None, *, emulators: bool = True, path: Sequence[Path] = (REPO, FUNCTIONS_DIR)
) -> dict[str, str]:
    """The environment of a process the stack starts: the parent's, the emulators' endpoints (through
    ``identity``'s IAM proxy ports when given), and ``path`` as PYTHONPATH. The one place that writes it."""
    env = _base_env()
    if emulators:
        env.update(_emulator_env(stack))
    if identity is not None:
        env.update(stack.endpoints["identities"][identity])
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    return env


def _gate_key_file(stack: Stack, model: str = "{model}") -> Path:
    """The file of ``model``'s Spinnaker webhook key (the ``{model}`` template by default, as the setting names it)."""
    return stack.root / "secrets" / f"spinnaker-key-{model}"


def _gate_client_certificate(stack: Stack) -> Path:
    """The functions' X.509 client certificate for Gate (local_emulator/_gate_tls.py)."""
    return stack.root / "secrets" / "gate-client.pem"


def _settings(stack: Stack) -> dict[str, str]:
    """Every CD4ML_* setting of the stack's deployment, but the per-stage ones."""
    return {
        "CD4ML_PROJECT": PROJECT,
        "CD4ML_REGION": REGION,
        "CD4ML_DATA_BUCKET": DATA_BUCKET,
        "CD4ML_ARTIFACT_BUCKET": ARTIFACT_BUCKET,
        "CD4ML_VERTEX_ENDPOINT": f"http://{stack.endpoints['vertex']}",
        # Each model's own accounts and repository, as Terraform sets them (terraform/main.tf, cd4ml.identities).
        "CD4ML_TRAINING_SERVICE_ACCOUNT": f"{{account}}@{PROJECT}.iam.gserviceaccount.com",
        "CD4ML_BUILD_SERVICE_ACCOUNT": f"{{account}}@{PROJECT}.iam.gserviceaccount.com",
        "CD4ML_REGISTRY": f"{stack.endpoints['registry']}/cd4ml-{{model}}",
        # Distribution speaks plain HTTP here; under the chaos session through its API front (_registry_front)
        "CD4ML_REGISTRY_API": f"http://{stack.endpoints.get('registry_api', stack.endpoints['registry'])}",
        "CD4ML_CLOUDBUILD_ENDPOINT": f"http://{stack.endpoints['cloudbuild']}",
        "CD4ML_GATE_URL": stack.endpoints["gate"],
        "CD4ML_GATE_AUTH": f"x509:file:{_gate_client_certificate(stack)}",  # the Gate stand-in requires it
        "CD4ML_GATE_KEY_SECRET": f"file:{_gate_key_file(stack)}",
        "CD4ML_GATE_CONFIRM_SECONDS": "30",
        # Each notification channel's webhook URL (the receiver stand-in's), one file per channel (_stack_parts)
        "CD4ML_NOTIFY_SECRETS": f"file:{stack.root / 'secrets'}/notify-{{channel}}",
    }


def stage_env(stack: Stack, stage: str) -> dict[str, str]:
    """The environment of a stage's process: exactly the variables the catalog lists for it."""
    values = {**_settings(stack), "CD4ML_STAGE": stage, "CD4ML_DEAD_LETTER_TOPIC": catalog.dead_letter_topic(stage)}
    names = set(catalog.load().stage(stage).env) | {"CD4ML_STAGE", "CD4ML_DEAD_LETTER_TOPIC"}
    # Pub/Sub and GCS through its identity's IAM proxy ports; only functions/ importable, as in the archive.
    env = _child_env(stack, f"function:{stage}", path=(FUNCTIONS_DIR,))
    env.update({k: v for k, v in values.items() if k in names})
    if "CD4ML_GATE_URL" in names:  # Gate's certificate is signed by the stack's CA (production: a public one)
        env["REQUESTS_CA_BUNDLE"] = str(stack.root / "gate" / "tls" / "trust.pem")
    return env


def _emulator_env(stack: Stack) -> dict[str, str]:
    e = stack.endpoints
    # Storage goes through the IAM proxy's unrestricted port once it is up: it sees every write, so it can publish
    # Cloud Storage's bucket notifications (_storage_notifications) for uploads by users and tests too.
    admin = (e.get("identities") or {}).get("admin") or {}
    return {
        "PUBSUB_EMULATOR_HOST": e["pubsub"],
        "FIRESTORE_EMULATOR_HOST": e["firestore"],
        "STORAGE_EMULATOR_HOST": admin.get("STORAGE_EMULATOR_HOST", e["storage"]),
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }


def push_routes(stack: Stack) -> Path:
    """The route file of the stack's Pub/Sub push relay (local_emulator/pubsub_push.py)."""
    return stack.root / "pubsub-push.json"


def client_env(stack: Stack) -> dict[str, str]:
    """What a shell (or the CLI) needs to talk to the running stack."""
    return {**_emulator_env(stack), **_settings(stack)}


def up(
    models: list[Path] | None = None,
    *,
    scheduler: bool = True,
    tick_seconds: float = 2.0,
    say: Callable[[str], None] = print,
    supervised: bool = False,
) -> Stack:
    """Start everything, wait until ready, create topics, subscriptions and buckets, push the models.

    ``supervised``: the functions run behind ``local_emulator.supervisor``, which restarts a crashed instance.
    """
    root = state_dir()
    existing = Stack.load(root)
    if existing is not None and existing.running():
        raise AlreadyRunning(f"the local stack is already running (state in {root}); `cd4ml local down` stops it")
    reset(root)
    stack = Stack(root=root)
    started = time.monotonic()
    from local_emulator._stack_parts import (
        _apply_topology,
        _start_delivery,
        _start_functions,
        _start_scheduler,
        _start_services,
        _start_ui,
    )

    folders = usable_models(models if models is not None else default_models(), say)
    try:
        _start_services(stack)
        _apply_topology(stack, plan(catalog.load()))
        _start_delivery(stack, folders)
        say(f"emulators and stand-ins ready in {time.monotonic() - started:.1f} s")
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
    from cd4ml_cli import models

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


def stop(stack: Stack, name: str) -> None:
    """Stop one process of the stack (tests use it to take the Gate down)."""
    processes.stop(stack.pids.pop(name))
    stack.save()


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
    order = sorted(pids, key=lambda n: (not n.startswith(("fn-", "scheduler")), n))
    for name in order:
        processes.stop(pids[name])
    (stack.root / STATE_FILE).unlink(missing_ok=True)
    say(f"stopped {len(order)} processes")
    return True


def current() -> Stack:
    """The running stack; StackError when there is none."""
    stack = Stack.load()
    if stack is None or not stack.running():
        raise StackError("the local stack is not running: start it with `cd4ml local up`")
    return stack


# The parts' public entry points, for callers of this module (tests, benchmarks): defined in _stack_parts,
# which imports the names above, so this import comes last.
from local_emulator._stack_parts import gate_config as gate_config  # noqa: E402
from local_emulator._stack_parts import push_model as push_model  # noqa: E402
from local_emulator._stack_parts import start_gate as start_gate  # noqa: E402
