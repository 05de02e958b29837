"""Starting the parts of the local stack: emulators, IAM proxy, stand-ins, functions, scheduler; pushing models.

``local_emulator.stack.up`` calls these in order; each records its processes' pids on the Stack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets as random_secrets
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cd4ml import catalog, identities
from local_emulator import iam_proxy
from local_emulator.common import faults, processes
from local_emulator.pubsub.topology import Topology, create_topics, plan, subscribe
from local_emulator.spinnaker import tls as _gate_tls
from local_emulator.stack.state import (
    ARTIFACT_BUCKET,
    DATA_BUCKET,
    FUNCTIONS_DIR,
    GCLOUD_PLATFORM,
    PROJECT,
    REPO,
    Stack,
    _base_env,
    _child_env,
    _emulator_env,
    _gate_client_certificate,
    _gate_key_file,
    _http_ok,
    approval_policy_file,
    push_routes,
    stage_env,
    stop,
)


def _start_services(stack: Stack) -> None:
    env = _base_env()
    ports = {name: processes.free_port() for name in ("pubsub", "firestore", "storage", "vertex", "registry")}
    stack.endpoints.update(
        {
            "pubsub": f"127.0.0.1:{ports['pubsub']}",
            "firestore": f"127.0.0.1:{ports['firestore']}",
            "storage": f"http://127.0.0.1:{ports['storage']}",
            "vertex": f"127.0.0.1:{ports['vertex']}",
            "project": PROJECT,
            "registry": f"127.0.0.1:{ports['registry']}",  # chosen now: Vertex runs container jobs from it
        }
    )
    stack.start(
        "pubsub",
        [
            str(GCLOUD_PLATFORM / "pubsub-emulator/bin/cloud-pubsub-emulator"),
            "--host=127.0.0.1",
            f"--port={ports['pubsub']}",
        ],
        env,
    )
    stack.start(
        "firestore",
        [
            str(GCLOUD_PLATFORM / "cloud-firestore-emulator/cloud_firestore_emulator"),
            "start",
            "--host=127.0.0.1",
            f"--port={ports['firestore']}",
        ],
        env,
    )
    stack.start(
        "storage",
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host=127.0.0.1",
            f"--port={ports['storage']}",
            "--in-memory",
        ],
        env,
    )
    _start_iam(stack)
    # Trainers (and their package downloads) act as the training service account; images are pulled as Vertex's
    # service agent (_vertex_container.service_agent_creds).
    vertex_env = {
        **_child_env(stack),
        "STORAGE_EMULATOR_HOST": stack.endpoints["identities"]["training"]["STORAGE_EMULATOR_HOST"],
        "LOCAL_TOKEN_KEY": str(token_key(stack)),
    }
    stack.start(
        "vertex",
        [
            sys.executable,
            "-m",
            "local_emulator.vertex",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["vertex"]),
            "--state-dir",
            str(stack.root / "vertex"),
            "--registry",
            stack.endpoints["registry"],
        ],
        vertex_env,
    )
    stack.wait("pubsub", _http_ok(f"http://127.0.0.1:{ports['pubsub']}/v1/projects/{PROJECT}/topics"))
    stack.wait("firestore", _http_ok(f"http://127.0.0.1:{ports['firestore']}/"))
    stack.wait("storage", _http_ok(f"http://127.0.0.1:{ports['storage']}/storage/v1/b?project={PROJECT}"))
    stack.wait("vertex", lambda: processes.port_open(ports["vertex"]))
    _set_client_env(stack)
    from google.api_core.exceptions import Conflict

    from cd4ml import clients

    storage = clients.storage_client(_cli_settings())
    for bucket in (DATA_BUCKET, ARTIFACT_BUCKET):
        with contextlib.suppress(Conflict):
            storage.create_bucket(bucket)


def gate_config(manifests: list[Any], keys: Mapping[str, str], registry: str) -> dict[str, Any]:
    """The Gate stand-in's pipelines: one canary pipeline per model, as README's Spinnaker setup has a user paste.

    ``registry`` is CD4ML_REGISTRY, ``{model}`` standing for the model (a repository per model).

    Its webhook trigger's source is derived from the model's name; its payload constraints are the model's own key
    and name; its expected artifact is an image of the model's own repository. So one model's key, or manifest,
    cannot start another model's pipeline, nor its own with another model's image.
    """
    from cd4ml import spinnaker

    return {
        "pipelines": [
            {
                "application": m.canary_application,
                "name": m.canary_pipeline or f"{m.name}-canary",
                "expectedArtifacts": [
                    {
                        "id": f"{m.name}-image",
                        "matchArtifact": {
                            "type": "docker/image",
                            "name": f"^{re.escape(identities.image_repository(registry, m.name))}$",
                        },
                    }
                ],
                "triggers": [
                    {
                        "type": "webhook",
                        "source": spinnaker.webhook_source(m.name),
                        "enabled": True,
                        "payloadConstraints": {"cd4ml_key": f"^{keys[m.name]}$", "model": f"^{m.name}$"},
                        "expectedArtifactIds": [f"{m.name}-image"],
                    }
                ],
            }
            for m in manifests
            if m.canary_application  # a model without a canary has no pipeline
        ]
    }


def _registry(stack: Stack) -> str:
    """The stack's CD4ML_REGISTRY: a repository per model (``cd4ml-{model}``), as the builds push to."""
    return f"{stack.endpoints['registry']}/cd4ml-{{model}}"


def write_gate_key(stack: Stack, model: str) -> str:
    """``model``'s own webhook key (made once, kept across restarts), as Terraform's per-model secret holds it."""
    key_file = _gate_key_file(stack, model)
    if not key_file.is_file():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(random_secrets.token_hex(16))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def token_key(stack: Stack) -> Path:
    """The key of the stack's access tokens (``local_emulator.iam.access_tokens``), made on first use."""
    from local_emulator.iam import access_tokens

    path = stack.root / "iam" / "token.key"
    return path if path.exists() else access_tokens.new_key(path)


def _start_iam(stack: Stack, attempts: int = 3) -> None:
    """The IAM proxy, serving every identity on ports chosen here; ready when all are open.

    Its ~30 ports are picked before the proxy binds them, so another process may take one meanwhile: then the
    proxy exits ("Address already in use" from its HTTP listeners, "Failed to bind to address" from gRPC's) and is
    started again on fresh ports.
    """
    for attempt in range(1, attempts + 1):
        argv, stack.endpoints["identities"] = iam_proxy.command(
            PROJECT,
            DATA_BUCKET,
            ARTIFACT_BUCKET,
            stack.endpoints["pubsub"],
            stack.endpoints["storage"],
            token_key(stack),
        )
        stack.start("iam", argv, _child_env(stack, emulators=False))
        try:
            stack.wait("iam", lambda: iam_proxy.ready(stack.endpoints["identities"]))
            return
        except RuntimeError as exited:
            taken = any(m in str(exited) for m in ("Address already in use", "Failed to bind to address"))
            if attempt == attempts or not taken:
                raise
            processes.stop(stack.pids.pop("iam"))


def _start_delivery(stack: Stack, folders: list[Path]) -> None:
    """The OCI registry (and its gcr bridge), the Cloud Build stand-in and the Spinnaker Gate stand-in."""

    from cd4ml_models import folder as models

    env = _child_env(stack)
    ports = {name: processes.free_port() for name in ("cloudbuild", "gate", "registry_tokens")}
    ports["registry"] = (
        int(stack.endpoints["registry"].rsplit(":", 1)[1]) if "registry" in stack.endpoints else processes.free_port()
    )
    stack.endpoints.update(
        {
            "registry": f"127.0.0.1:{ports['registry']}",
            "cloudbuild": f"127.0.0.1:{ports['cloudbuild']}",
            "gate": f"https://127.0.0.1:{ports['gate']}",
            "registry_tokens": f"http://127.0.0.1:{ports['registry_tokens']}/v2/token",
        }
    )
    manifests = [models.read(f) for f in folders]
    keys = {m.name: write_gate_key(stack, m.name) for m in manifests}
    config = stack.root / "gate" / "pipelines.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(gate_config(manifests, keys, _registry(stack)), indent=2))
    _gate_tls.make(stack.root / "gate" / "tls", _gate_client_certificate(stack))
    build_storage = stack.endpoints["identities"]["build"]["STORAGE_EMULATOR_HOST"]  # builds act as the build account
    front: list[str] = []
    if faults.chaos_dir() is not None:  # the chaos session reaches the registry's API through a front it can fail
        ports["registry_api"] = processes.free_port()
        stack.endpoints["registry_api"] = f"127.0.0.1:{ports['registry_api']}"
        front = ["--api-port", str(ports["registry_api"])]
    # Distribution's token auth: the registry's own process serves the realm, granting from iam_bindings.yaml.
    tokens = ["--token-port", str(ports["registry_tokens"]), "--token-key", str(token_key(stack))]
    for name, env_for, more in (
        ("registry", env, [*front, *tokens]),
        ("cloudbuild", {**env, "STORAGE_EMULATOR_HOST": build_storage}, ["--token-key", str(token_key(stack))]),
    ):
        stack.start(name, [*_stand_in(f"local_emulator.{name}", ports[name], stack.root / name), *more], env_for)
    start_gate(stack)
    _start_receiver(stack, [models.read(f) for f in folders])
    _start_token_issuer(stack)
    stack.wait(
        "registry", lambda: processes.port_open(ports["registry"]) and processes.port_open(ports["registry_tokens"])
    )
    # The Cloud Build stand-in opens its port once its base image is ready: minutes on a cold cache.
    stack.wait("cloudbuild", lambda: processes.port_open(ports["cloudbuild"]), timeout=300)


def _start_token_issuer(stack: Stack) -> None:
    """The ID-token issuer stand-in (local_emulator/iam/token_issuer.py): its certificates verify `cd4ml approve`'s tokens."""
    port = processes.free_port()
    stack.endpoints["token_issuer"] = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "local_emulator.iam.token_issuer", "--host", "127.0.0.1", "--port", str(port)]
    stack.start(
        "token-issuer", [*argv, "--state-dir", str(stack.root / "token-issuer")], _child_env(stack, emulators=False)
    )
    stack.wait("token-issuer", _http_ok(f"http://127.0.0.1:{port}/health"))


def deploy_approval_policy(stack: Stack, manifest: Any) -> None:
    """What `terraform apply` does with a manifest of the repository: its approval block into the deployed policy."""
    from cd4ml.approval_policy import Policy

    file = approval_policy_file(stack)
    rules = dict(Policy.of(f"file:{file}").rules)
    rules.pop(manifest.name, None)
    if manifest.approval is not None:
        rules[manifest.name] = manifest.approval
    file.write_text(Policy(rules=rules).to_json())


def _start_receiver(stack: Stack, manifests: list[Any]) -> None:
    """The webhook receiver stand-in (local_emulator/webhooks/), and each channel's URL as its secret."""
    port = processes.free_port()
    stack.endpoints["notify"] = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "local_emulator.webhooks", "--host", "127.0.0.1", "--port", str(port)]
    stack.start(
        "notify-receiver", [*argv, "--state-dir", str(stack.root / "notify")], _child_env(stack, emulators=False)
    )
    stack.wait("notify-receiver", _http_ok(f"http://127.0.0.1:{port}/health"))
    for manifest in manifests:
        write_notify_secrets(stack, manifest)


def write_notify_secrets(stack: Stack, manifest: Any) -> None:
    """The secret of each channel ``manifest`` routes to: the receiver's URL for the route's format."""
    for route in manifest.notify:
        secret = stack.root / "secrets" / f"notify-{route.channel}"
        secret.parent.mkdir(parents=True, exist_ok=True)
        secret.write_text(f"{stack.endpoints['notify']}/{route.format}/{route.channel}")
        secret.chmod(0o600)


def _add_canary_pipeline(stack: Stack, manifest: Any) -> None:
    """A model pushed to the running stack whose webhook source no pipeline of Gate's triggers on yet gets its own
    canary pipeline, as the models it started with did (gate_config); an existing pipeline is never replaced, and a
    new one whose application and name are taken (a manifest copied from another model's) is named after the model.
    Gate restarts."""
    config = stack.root / "gate" / "pipelines.json"
    current = json.loads(config.read_text())
    known = {(p["application"], p["name"]) for p in current["pipelines"]}
    sources = {t.get("source") for p in current["pipelines"] for t in p.get("triggers") or ()}
    new = [
        {**p, "name": p["name"] if (p["application"], p["name"]) not in known else f"{p['name']}-{manifest.name}"}
        for p in gate_config([manifest], {manifest.name: write_gate_key(stack, manifest.name)}, _registry(stack))[
            "pipelines"
        ]
        if not {t.get("source") for t in p["triggers"]} & sources
    ]
    if new:
        config.write_text(json.dumps({**current, "pipelines": current["pipelines"] + new}, indent=2))
        # The pids on disk are the truth: another process (a `cd4ml model push`) may have restarted Gate since this
        # Stack was loaded, and stopping the stale pid left that Gate running on the old pipelines.
        on_disk = Stack.load(stack.root)
        if on_disk is not None:
            stack.pids.update(on_disk.pids)
        if "gate" in stack.pids:
            stop(stack, "gate")  # it reads its pipelines once, at start
        start_gate(stack)


def _stand_in(module: str, port: int, state: Path) -> list[str]:
    """The command line of a stand-in that serves on ``port`` and keeps its state in ``state``."""
    argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port), "--state-dir", str(state)]
    return [*argv, "--project", PROJECT]


def start_gate(stack: Stack) -> None:
    """(Re)start the Spinnaker Gate stand-in on its port, with the pipelines written by ``up``."""
    port = int(stack.endpoints["gate"].rsplit(":", 1)[1])
    env = _child_env(stack, emulators=False)
    stack.start(
        "gate",
        [
            sys.executable,
            "-m",
            "local_emulator.spinnaker",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(stack.root / "gate"),
            "--config",
            str(stack.root / "gate" / "pipelines.json"),
            # Gate's x509 authentication: reads need the functions' client certificate (local_emulator/spinnaker/tls.py)
            "--tls-cert",
            str(stack.root / "gate" / "tls" / "server.pem"),
            "--client-ca",
            str(stack.root / "gate" / "tls" / "ca.pem"),
            "--require-auth",
        ],
        env,
    )
    stack.wait("gate", _http_ok(f"https://127.0.0.1:{port}/health", ca=stack.root / "gate" / "tls" / "ca.pem"))


def _apply_topology(stack: Stack, topology: Topology) -> None:
    """Create every topic now; push subscriptions wait for their functions (see _start_functions)."""
    create_topics(PROJECT, topology)
    stack.endpoints["topology"] = [s.name for s in topology.subscriptions]
    _notify_on_writes()


def _notify_on_writes() -> None:
    """What Terraform's google_storage_notification makes: each bucket of catalog ``notification_topics`` notifies
    its topic (JSON_API_V1), through the IAM proxy's notificationConfigs API (the emulator has none)."""
    from cd4ml import clients

    storage = clients.storage_client(_cli_settings())
    for topic, bucket, event_types in catalog.load().notification_topics:
        name = DATA_BUCKET if bucket == "data" else ARTIFACT_BUCKET
        config = storage.bucket(name).notification(
            topic_name=topic, topic_project=PROJECT, payload_format="JSON_API_V1", event_types=list(event_types)
        )
        config.create()


def _start_functions(stack: Stack, supervised: bool = False) -> None:
    """One functions-framework server per stage; ``supervised``: behind local_emulator.stack.supervisor (restarts)."""
    cat = catalog.load()
    ports = {stage.name: processes.free_port() for stage in cat.stages}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    stack.endpoints["functions"] = urls  # before their environments: the decision endpoint's URL is a setting
    argv = {
        stage.name: [
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            stage.name,
            "--source",
            str(FUNCTIONS_DIR / "main.py"),
            "--signature-type",
            "http" if stage.http else "cloudevent",
            "--host",
            "127.0.0.1",
        ]
        for stage in cat.stages
    }
    if supervised:
        spec = stack.root / "supervisor.json"
        spec.write_text(
            json.dumps(
                {
                    "log_dir": str(stack.logs),
                    "functions": {
                        name: {"port": ports[name], "argv": argv[name], "env": stage_env(stack, name)} for name in ports
                    },
                }
            )
        )
        stack.start(
            "fn-supervisor",
            [sys.executable, "-m", "local_emulator.stack.supervisor", "--spec", str(spec)],
            _child_env(stack, emulators=False, path=(REPO,)),
        )
    for name in ports:
        if not supervised:
            stack.start(f"fn-{name}", [*argv[name], "--port", str(ports[name])], stage_env(stack, name))
    for name, port in ports.items():
        stack.wait("fn-supervisor" if supervised else f"fn-{name}", lambda p=port: processes.port_open(p))  # type: ignore[misc]
    stack.endpoints["functions"] = urls
    routes = push_routes(stack)
    stack.start(
        "pubsub-push",
        [sys.executable, "-m", "local_emulator.pubsub.push", "--routes", str(routes)],
        _child_env(stack, path=(REPO,)),
    )
    subscribe(PROJECT, plan(cat), urls, routes)
    stack.save()


def _start_scheduler(stack: Stack, tick_seconds: float, folders: list[Path]) -> None:
    """What Terraform's Cloud Scheduler jobs publish: for each model pushed to the stack (push_model writes its
    manifest to the jobs folder, read again on change), and the watch tick."""
    env = _child_env(stack)
    argv = [sys.executable, "-m", "local_emulator.scheduler", "--project", PROJECT, "--tick-seconds", str(tick_seconds)]
    stack.start("scheduler", [*argv, "--jobs-dir", str(_jobs_dir(stack))], env)


def _jobs_dir(stack: Stack) -> Path:
    """The local scheduler's jobs: one manifest per pushed model (what terraform apply makes a job of)."""
    return stack.root / "scheduler"


def _start_ui(stack: Stack) -> str:
    """The read-only web view of the ledger (``cd4ml ui``, package cd4ml_ui) on the stack's Firestore; its address."""
    port = processes.free_port()
    stack.endpoints["ui"] = f"http://127.0.0.1:{port}/"
    env = {**_child_env(stack), "CD4ML_PROJECT": PROJECT}
    stack.start("ui", [sys.executable, "-m", "cd4ml_ui", "--host", "127.0.0.1", "--port", str(port)], env)
    stack.wait("ui", _http_ok(f"http://127.0.0.1:{port}/healthz"))
    return str(stack.endpoints["ui"])


def push_model(stack: Stack, folder: Path) -> str:
    """Push a model folder to the stack and seed its source data (``seed_data.py``, local convention)."""
    from cd4ml_models import folder as models

    from cd4ml import clients
    from cd4ml.manifest import resolve_gcs

    _set_client_env(stack)
    storage = clients.storage_client(_cli_settings())
    pushed = models.push(storage, folder, ARTIFACT_BUCKET, _deployment_settings(stack))
    jobs = _jobs_dir(stack)
    jobs.mkdir(parents=True, exist_ok=True)
    (jobs / f"{pushed.manifest.name}.yaml").write_text((folder / models.MANIFEST).read_text())
    deploy_approval_policy(stack, pushed.manifest)
    if "notify" in stack.endpoints:
        write_notify_secrets(stack, pushed.manifest)
    if "gate" in stack.endpoints:
        _add_canary_pipeline(stack, pushed.manifest)
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


def _set_client_env(stack: Stack) -> None:
    os.environ.update(_emulator_env(stack))


def _deployment_settings(stack: Stack) -> Any:
    """The stack's settings as a deployment's CLI has them (a trainer image's push needs Cloud Build and the
    registry); None before Cloud Build is up."""
    if "cloudbuild" not in stack.endpoints:
        return None
    from cd4ml.settings import Settings
    from local_emulator.stack.state import client_env

    return Settings.from_env(client_env(stack))


def _cli_settings() -> Any:
    from cd4ml.settings import Settings

    return Settings.from_env(
        {"CD4ML_PROJECT": PROJECT, "CD4ML_DATA_BUCKET": DATA_BUCKET, "CD4ML_ARTIFACT_BUCKET": ARTIFACT_BUCKET}
    )
