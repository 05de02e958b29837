"""``cd4ml local up | env | down``: the whole chain on one machine, against real emulators.

Real where a real thing exists (Google's Pub/Sub and Firestore emulators, a GCS emulator, functions-
framework servers running the unchanged functions), an API-level stand-in where none does (Vertex AI).
Every process is started in its own session and recorded by pid in ``.cd4ml/stack.json``; ``down``
stops each process group and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cd4ml import catalog
from cd4ml.errors import Cd4mlError
from local_emulator import iam_proxy, processes
from local_emulator.topology import Topology, plan

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
        (self.root / STATE_FILE).write_text(json.dumps(
            {"pids": self.pids, "endpoints": self.endpoints, "env": self.env}, indent=2))

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
        processes.wait_until(check, what=name, timeout=timeout, pid=self.pids[name],
                             log=self.logs / f"{name}.log")


def _http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status < 500)
        except OSError:
            return False
    return check


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CD4ML_", "PUBSUB_EMULATOR", "FIRESTORE_EMULATOR",
                                                                     "STORAGE_EMULATOR"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _settings(stack: Stack) -> dict[str, str]:
    """Every CD4ML_* setting of the stack's deployment, but the per-stage ones."""
    return {
        "CD4ML_PROJECT": PROJECT, "CD4ML_REGION": REGION,
        "CD4ML_DATA_BUCKET": DATA_BUCKET, "CD4ML_ARTIFACT_BUCKET": ARTIFACT_BUCKET,
        "CD4ML_VERTEX_ENDPOINT": f"http://{stack.endpoints['vertex']}",
        "CD4ML_TRAINING_SERVICE_ACCOUNT": f"cd4ml-training@{PROJECT}.iam.gserviceaccount.com",
        "CD4ML_BUILD_SERVICE_ACCOUNT": f"cd4ml-build@{PROJECT}.iam.gserviceaccount.com",
        "CD4ML_REGISTRY": f"{stack.endpoints['registry']}/cd4ml",
        "CD4ML_CLOUDBUILD_ENDPOINT": f"http://{stack.endpoints['cloudbuild']}",
        "CD4ML_GATE_URL": stack.endpoints["gate"],
        "CD4ML_GATE_KEY_SECRET": f"file:{_gate_key_file(stack)}",
    }


def stage_env(stack: Stack, stage: str) -> dict[str, str]:
    """The environment of a stage's process: exactly the variables the catalog lists for it."""
    values = {**_settings(stack), "CD4ML_STAGE": stage, "CD4ML_DEAD_LETTER_TOPIC": catalog.dead_letter_topic(stage)}
    names = set(catalog.load().stage(stage).env) | {"CD4ML_STAGE", "CD4ML_DEAD_LETTER_TOPIC"}
    env = _base_env()
    env.update({k: v for k, v in values.items() if k in names})
    env.update(_emulator_env(stack))
    env.update(stack.endpoints["identities"][f"function:{stage}"])  # Pub/Sub and GCS through its IAM proxy
    env["PYTHONPATH"] = str(FUNCTIONS_DIR)
    return env


def _emulator_env(stack: Stack) -> dict[str, str]:
    e = stack.endpoints
    return {"PUBSUB_EMULATOR_HOST": e["pubsub"], "FIRESTORE_EMULATOR_HOST": e["firestore"],
            "STORAGE_EMULATOR_HOST": e["storage"], "GOOGLE_CLOUD_PROJECT": PROJECT}


def client_env(stack: Stack) -> dict[str, str]:
    """What a shell (or the CLI) needs to talk to the running stack."""
    return {**_emulator_env(stack), **_settings(stack)}


def up(models: list[Path] | None = None, *, scheduler: bool = True, tick_seconds: float = 2.0,
       say: Callable[[str], None] = print) -> Stack:
    """Start everything, wait until ready, create topics, subscriptions and buckets, push the models."""
    root = state_dir()
    existing = Stack.load(root)
    if existing is not None and existing.running():
        raise AlreadyRunning(f"the local stack is already running (state in {root}); `cd4ml local down` stops it")
    if existing is not None:
        shutil.rmtree(root / "logs", ignore_errors=True)
    stack = Stack(root=root)
    started = time.monotonic()
    try:
        _start_services(stack)
        _apply_topology(stack, plan(catalog.load()))
        _start_delivery(stack, models if models is not None else default_models())
        say(f"emulators and stand-ins ready in {time.monotonic() - started:.1f} s")
        _start_functions(stack)
        say(f"functions ready in {time.monotonic() - started:.1f} s")
        for folder in models if models is not None else default_models():
            pushed = push_model(stack, folder)
            say(f"model {pushed} pushed")
        if scheduler:
            _start_scheduler(stack, tick_seconds, models if models is not None else default_models())
    except BaseException:
        down(stack)
        raise
    stack.env = client_env(stack)
    stack.save()
    say(f"local stack up in {time.monotonic() - started:.1f} s; state in {root}")
    return stack


def default_models() -> list[Path]:
    """Every folder under examples/ that holds a manifest.yaml."""
    return sorted(p.parent for p in (REPO / "examples").glob("*/manifest.yaml"))


def _start_services(stack: Stack) -> None:
    env = _base_env()
    ports = {name: processes.free_port() for name in ("pubsub", "firestore", "storage", "vertex", "registry")}
    stack.endpoints.update({
        "pubsub": f"127.0.0.1:{ports['pubsub']}", "firestore": f"127.0.0.1:{ports['firestore']}",
        "storage": f"http://127.0.0.1:{ports['storage']}", "vertex": f"127.0.0.1:{ports['vertex']}",
        "project": PROJECT,
        "registry": f"127.0.0.1:{ports['registry']}",  # chosen now: Vertex runs container jobs from it
    })
    stack.start("pubsub", [str(GCLOUD_PLATFORM / "pubsub-emulator/bin/cloud-pubsub-emulator"),
                           "--host=127.0.0.1", f"--port={ports['pubsub']}"], env)
    stack.start("firestore", [str(GCLOUD_PLATFORM / "cloud-firestore-emulator/cloud_firestore_emulator"),
                              "start", "--host=127.0.0.1", f"--port={ports['firestore']}"], env)
    stack.start("storage", [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                            f"--port={ports['storage']}", "--in-memory"], env)
    iam_argv, stack.endpoints["identities"] = iam_proxy.command(PROJECT, DATA_BUCKET, ARTIFACT_BUCKET,
                                                                stack.endpoints["pubsub"], stack.endpoints["storage"])
    stack.start("iam", iam_argv, {**env, "PYTHONPATH": os.pathsep.join([str(REPO), str(FUNCTIONS_DIR)])})
    # Trainers (and their package downloads) act as the training service account.
    vertex_env = {**env, **_emulator_env(stack),
                  "STORAGE_EMULATOR_HOST": stack.endpoints["identities"]["training"]["STORAGE_EMULATOR_HOST"]}
    stack.start("vertex", [sys.executable, "-m", "local_emulator.vertex", "--host", "127.0.0.1",
                           "--port", str(ports["vertex"]), "--state-dir", str(stack.root / "vertex"),
                           "--registry", stack.endpoints["registry"]],
                {**vertex_env, "PYTHONPATH": os.pathsep.join([str(REPO), str(FUNCTIONS_DIR)])})
    stack.wait("pubsub", _http_ok(f"http://127.0.0.1:{ports['pubsub']}/v1/projects/{PROJECT}/topics"))
    stack.wait("firestore", _http_ok(f"http://127.0.0.1:{ports['firestore']}/"))
    stack.wait("storage", _http_ok(f"http://127.0.0.1:{ports['storage']}/storage/v1/b?project={PROJECT}"))
    stack.wait("vertex", lambda: processes.port_open(ports["vertex"]))
    stack.wait("iam", lambda: iam_proxy.ready(stack.endpoints["identities"]))
    _set_client_env(stack)
    from google.api_core.exceptions import Conflict

    from cd4ml import clients

    storage = clients.storage_client(_cli_settings())
    for bucket in (DATA_BUCKET, ARTIFACT_BUCKET):
        with contextlib.suppress(Conflict):
            storage.create_bucket(bucket)


def _gate_key_file(stack: Stack) -> Path:
    return stack.root / "secrets" / "spinnaker-webhook-key"


def gate_config(manifests: list[Any], key: str) -> dict[str, Any]:
    """The Gate stand-in's pipelines: one canary pipeline per model, triggered by its webhook and the key."""
    return {"pipelines": [{
        "application": m.canary_application,
        "name": m.canary_pipeline or f"{m.name}-canary",
        "triggers": [{"type": "webhook", "source": m.webhook_source, "enabled": True,
                      "payloadConstraints": {"cd4ml_key": f"^{key}$", "model": f"^{m.name}$"}}],
    } for m in manifests]}


def _start_delivery(stack: Stack, folders: list[Path]) -> None:
    """The OCI registry (and its gcr bridge), the Cloud Build stand-in and the Spinnaker Gate stand-in."""
    import secrets as random_secrets

    from cd4ml_cli import models

    env = {**_base_env(), **_emulator_env(stack), "PYTHONPATH": os.pathsep.join([str(REPO), str(FUNCTIONS_DIR)])}
    ports = {name: processes.free_port() for name in ("cloudbuild", "gate")}
    ports["registry"] = int(stack.endpoints["registry"].rsplit(":", 1)[1]) if "registry" in stack.endpoints \
        else processes.free_port()
    stack.endpoints.update({"registry": f"127.0.0.1:{ports['registry']}",
                            "cloudbuild": f"127.0.0.1:{ports['cloudbuild']}",
                            "gate": f"http://127.0.0.1:{ports['gate']}"})
    key_file = _gate_key_file(stack)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = random_secrets.token_hex(16)
    key_file.write_text(key)
    key_file.chmod(0o600)
    config = stack.root / "gate" / "pipelines.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(gate_config([models.read(f) for f in folders], key), indent=2))
    common = ["--host", "127.0.0.1"]
    stack.start("registry", [sys.executable, "-m", "local_emulator.registry", *common, "--port", str(ports["registry"]),
                             "--state-dir", str(stack.root / "registry"), "--project", PROJECT], env)
    stack.start("cloudbuild", [sys.executable, "-m", "local_emulator.cloudbuild", *common,
                               "--port", str(ports["cloudbuild"]), "--state-dir", str(stack.root / "cloudbuild"),
                               "--project", PROJECT],
                {**env, "STORAGE_EMULATOR_HOST": stack.endpoints["identities"]["build"]["STORAGE_EMULATOR_HOST"]})
    start_gate(stack)
    stack.wait("registry", _http_ok(f"http://127.0.0.1:{ports['registry']}/v2/"))
    # The Cloud Build stand-in opens its port once its base image is ready: minutes on a cold cache.
    stack.wait("cloudbuild", lambda: processes.port_open(ports["cloudbuild"]), timeout=300)


def start_gate(stack: Stack) -> None:
    """(Re)start the Spinnaker Gate stand-in on its port, with the pipelines written by ``up``."""
    port = int(stack.endpoints["gate"].rsplit(":", 1)[1])
    env = {**_base_env(), "PYTHONPATH": os.pathsep.join([str(REPO), str(FUNCTIONS_DIR)])}
    stack.start("gate", [sys.executable, "-m", "local_emulator.spinnaker_gate", "--host", "127.0.0.1", "--port", str(port),
                         "--state-dir", str(stack.root / "gate"), "--config", str(stack.root / "gate" / "pipelines.json")],
                env)
    stack.wait("gate", _http_ok(f"http://127.0.0.1:{port}/health"))


def stop(stack: Stack, name: str) -> None:
    """Stop one process of the stack (tests use it to take the Gate down)."""
    processes.stop(stack.pids.pop(name))
    stack.save()


def _set_client_env(stack: Stack) -> None:
    os.environ.update(_emulator_env(stack))


def _cli_settings() -> Any:
    from cd4ml.settings import Settings

    return Settings.from_env({"CD4ML_PROJECT": PROJECT, "CD4ML_DATA_BUCKET": DATA_BUCKET, "CD4ML_ARTIFACT_BUCKET": ARTIFACT_BUCKET})


def _apply_topology(stack: Stack, topology: Topology) -> None:
    """Create every topic now; push subscriptions wait for their functions (see _start_functions)."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    for topic in topology.topics:
        publisher.create_topic(name=publisher.topic_path(PROJECT, topic))
    stack.endpoints["topology"] = [s.name for s in topology.subscriptions]


def _subscribe(topology: Topology, functions: Mapping[str, str]) -> None:
    from google.cloud import pubsub_v1
    from google.protobuf import duration_pb2

    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    for sub in topology.subscriptions:
        request: dict[str, Any] = {
            "name": subscriber.subscription_path(PROJECT, sub.name),
            "topic": publisher.topic_path(PROJECT, sub.topic),
            "ack_deadline_seconds": sub.ack_deadline_seconds,
        }
        if sub.stage is not None:
            request["push_config"] = {"push_endpoint": f"{functions[sub.stage]}/projects/{PROJECT}/topics/{sub.topic}"}
            request["dead_letter_policy"] = {"dead_letter_topic": publisher.topic_path(PROJECT, str(sub.dead_letter_topic)),
                                             "max_delivery_attempts": sub.max_delivery_attempts}
            request["retry_policy"] = {
                "minimum_backoff": duration_pb2.Duration(seconds=sub.minimum_backoff_seconds),
                "maximum_backoff": duration_pb2.Duration(seconds=sub.maximum_backoff_seconds)}
        else:
            request["message_retention_duration"] = duration_pb2.Duration(seconds=sub.retention_seconds)
            request["retain_acked_messages"] = True  # looking at a dead letter must not lose it
        subscriber.create_subscription(request=request)


def _start_functions(stack: Stack) -> None:
    cat = catalog.load()
    urls: dict[str, str] = {}
    ports: dict[str, int] = {}
    for stage in cat.stages:
        port = processes.free_port()
        ports[stage.name] = port
        urls[stage.name] = f"http://127.0.0.1:{port}"
        stack.start(f"fn-{stage.name}", [sys.executable, "-m", "functions_framework", "--target", stage.name,
                                         "--source", str(FUNCTIONS_DIR / "main.py"),
                                         "--signature-type", "cloudevent", "--host", "127.0.0.1",
                                         "--port", str(port)], stage_env(stack, stage.name))
    for stage in cat.stages:
        stack.wait(f"fn-{stage.name}", lambda p=ports[stage.name]: processes.port_open(p))  # type: ignore[misc]
    stack.endpoints["functions"] = urls
    _subscribe(plan(cat), urls)
    stack.save()


def _start_scheduler(stack: Stack, tick_seconds: float, folders: list[Path]) -> None:
    """What Terraform's Cloud Scheduler jobs publish, for exactly the models this stack was started with."""
    env = {**_base_env(), **_emulator_env(stack), "PYTHONPATH": os.pathsep.join([str(REPO), str(FUNCTIONS_DIR)])}
    argv = [sys.executable, "-m", "local_emulator.scheduler", "--project", PROJECT,
            "--tick-seconds", str(tick_seconds)]
    for folder in folders:
        argv += ["--manifest", str(folder / "manifest.yaml")]
    stack.start("scheduler", argv, env)


def push_model(stack: Stack, folder: Path) -> str:
    """Push a model folder to the stack and seed its source data (``seed_data.py``, local convention)."""
    from cd4ml_cli import models

    from cd4ml import clients
    from cd4ml.manifest import resolve_gcs

    _set_client_env(stack)
    storage = clients.storage_client(_cli_settings())
    pushed = models.push(storage, folder, ARTIFACT_BUCKET)
    seeder = folder / "seed_data.py"
    if seeder.is_file():
        source = resolve_gcs(pushed.manifest.data_source, DATA_BUCKET)
        bucket, _, prefix = source[5:].partition("/")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, str(seeder), tmp], check=True, capture_output=True)
            for file in sorted(Path(tmp).rglob("*")):
                if file.is_file():
                    name = prefix.rstrip("/") + "/" + str(file.relative_to(tmp))
                    storage.bucket(bucket).blob(name).upload_from_filename(str(file))
    return pushed.manifest.name


def down(stack: Stack | None = None, say: Callable[[str], None] = print) -> bool:
    """Stop every process the stack started, by pid; False when nothing was running."""
    stack = stack or Stack.load()
    if stack is None:
        return False
    # Functions and the scheduler first, so nothing publishes into emulators that are going away.
    order = sorted(stack.pids, key=lambda n: (not n.startswith(("fn-", "scheduler")), n))
    for name in order:
        processes.stop(stack.pids[name])
    (stack.root / STATE_FILE).unlink(missing_ok=True)
    say(f"stopped {len(order)} processes")
    return True


def current() -> Stack:
    """The running stack; StackError when there is none."""
    stack = Stack.load()
    if stack is None or not stack.running():
        raise StackError("the local stack is not running: start it with `cd4ml local up`")
    return stack
