"""The local stack's state and environment: where it lives, the pids it started, the endpoints and settings each
process gets. Shared by ``stack`` (up, down) and ``parts`` (starting each part), which import it; it imports
neither, so the stack has no import circle."""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cd4ml import catalog
from cd4ml.errors import Cd4mlError
from local_emulator.common import processes

PROJECT = "cd4ml-local"
REGION = "us-central1"
DATA_BUCKET = "cd4ml-local-data"
ARTIFACT_BUCKET = "cd4ml-local-artifacts"
GCLOUD_PLATFORM = Path(os.environ.get("CD4ML_GCLOUD_PLATFORM", "/usr/lib/google-cloud-sdk/platform"))
REPO = Path(__file__).resolve().parents[2]
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
    """The functions' X.509 client certificate for Gate (local_emulator/spinnaker/tls.py)."""
    return stack.root / "secrets" / "gate-client.pem"


def _settings(stack: Stack) -> dict[str, str]:
    """Every CD4ML_* setting of the stack's deployment, but the per-stage ones."""
    decision_url = (stack.endpoints.get("functions") or {}).get("decide_approval", "")
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
        # The deployed approval policy: written when the stack deploys a model (push_model), as Terraform derives it
        # from the repository's manifests; never from the bucket a model team pushes to.
        "CD4ML_APPROVAL_POLICY": f"file:{approval_policy_file(stack)}",
        # ID tokens: the token issuer stand-in's certificates, the decision endpoint's URL as their audience.
        "CD4ML_TOKEN_CERTS_URL": f"{stack.endpoints.get('token_issuer', '')}/oauth2/v1/certs",
        "CD4ML_DECISION_URL": decision_url,
        "CD4ML_DECISION_AUDIENCES": decision_url,
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
    """The route file of the stack's Pub/Sub push relay (local_emulator/pubsub/push.py)."""
    return stack.root / "pubsub-push.json"


def approval_policy_file(stack: Stack) -> Path:
    """The stack's deployed approval policy (CD4ML_APPROVAL_POLICY's file)."""
    return stack.root / "approval-policy.json"


#: Where `cd4ml approve|reject` gets an ID token on the local stack (the token issuer stand-in; not a function setting).
LOCAL_TOKEN_ISSUER = "CD4ML_LOCAL_TOKEN_ISSUER"


def client_env(stack: Stack) -> dict[str, str]:
    """What a shell (or the CLI) needs to talk to the running stack."""
    return {**_emulator_env(stack), **_settings(stack), LOCAL_TOKEN_ISSUER: stack.endpoints.get("token_issuer", "")}


def stop(stack: Stack, name: str) -> None:
    """Stop one process of the stack (tests use it to take the Gate down)."""
    processes.stop(stack.pids.pop(name))
    stack.save()
