"""Local registry: the CNCF Distribution registry plus a bridge from its push notifications to the `gcr` topic.

One process runs both: `docker-registry serve` (Debian package docker-registry) as a child in its own
process group, with filesystem storage under the state dir and `notifications.endpoints` pointing at a
small HTTP receiver in this process. Each manifest push becomes an Artifact Registry message on the
Pub/Sub emulator (PUBSUB_EMULATOR_HOST), data
`{"action":"INSERT","digest":"HOST/REPO@sha256:…","tag":"HOST/REPO:TAG"}`; a delete becomes
`{"action":"DELETE",...}` with whichever of digest or tag the registry reported.

    python -m local_emulator.registry --host 127.0.0.1 --port P --state-dir DIR --project PROJECT [--topic gcr] \
        [--token-port T --token-key FILE]

With ``--token-port`` the registry runs with Distribution's ``auth: token`` and this process serves the realm
(``tokens``): every API call needs a token, issued to an identity of the local stack (its access token,
``--token-key``) for the actions its Artifact Registry roles in terraform/iam_bindings.yaml grant on that repository.
Ready when `GET http://HOST:P/v2/` answers (200, or 401 with token auth; the process logs "ready" then).
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from local_emulator.common.service import (
    TopicPublisher,
    configure_logging,
    kill_process_group,
    require_env,
    stop_event_on_signals,
)

#: Media types of image manifests and indexes: the only registry events that become `gcr` messages.
MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
EVENTS_PATH = "/events"

_log = logging.getLogger("registry")


@dataclass(frozen=True)
class GcrMessage:
    """One Artifact Registry notification, as published on the `gcr` topic."""

    action: str
    digest: str | None = None
    tag: str | None = None

    def to_json(self) -> bytes:
        body = {"action": self.action}
        if self.digest:
            body["digest"] = self.digest
        if self.tag:
            body["tag"] = self.tag
        return json.dumps(body, separators=(",", ":")).encode()


def gcr_messages(envelope: Mapping[str, Any], registry_host: str) -> list[GcrMessage]:
    """Translate a Distribution notification envelope into `gcr` messages; blobs and pulls give none."""
    messages = []
    for event in envelope.get("events", []):
        if not isinstance(event, Mapping):
            continue
        target = event.get("target") or {}
        repository = target.get("repository")
        action = event.get("action")
        if not repository or action not in ("push", "delete"):
            continue
        media_type = target.get("mediaType", "")
        if action == "push" and media_type not in MANIFEST_MEDIA_TYPES:
            continue
        digest = target.get("digest")
        tag = target.get("tag")
        image = f"{registry_host}/{repository}"
        messages.append(
            GcrMessage(
                action="INSERT" if action == "push" else "DELETE",
                digest=f"{image}@{digest}" if digest else None,
                tag=f"{image}:{tag}" if tag else None,
            )
        )
    return messages


@dataclass(frozen=True)
class TokenAuth:
    """Distribution's ``auth.token`` options (registry/auth/token/accesscontroller.go: all four are required)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path

    def config(self) -> dict[str, Any]:
        return {
            "token": {
                "realm": self.realm,
                "service": self.service,
                "issuer": self.issuer,
                "rootcertbundle": str(self.rootcertbundle),
            }
        }


def registry_config(*, address: str, data_dir: Path, notify_url: str, auth: TokenAuth | None = None) -> dict[str, Any]:
    """A Distribution 2.8 config: filesystem storage, deletes allowed, one notification endpoint per manifest push;
    with ``auth``, token authentication."""
    return {
        **({"auth": auth.config()} if auth is not None else {}),
        "version": 0.1,
        "log": {"level": "warn", "formatter": "json", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(data_dir)}, "delete": {"enabled": True}},
        "http": {"addr": address, "secret": secrets.token_hex(16)},
        "notifications": {
            "endpoints": [
                {
                    "name": "gcr-bridge",
                    "url": notify_url,
                    "timeout": "2s",
                    "threshold": 5,
                    "backoff": "1s",
                    "ignore": {"mediatypes": ["application/octet-stream"], "actions": ["pull"]},
                }
            ]
        },
    }


@dataclass(frozen=True)
class Settings:
    """Everything the process is started with (from its CLI)."""

    host: str
    port: int
    state_dir: Path
    project: str
    topic: str = "gcr"
    registry_binary: str = "/usr/bin/docker-registry"
    api_port: int = 0  # the chaos session's API front (_registry_front), 0 for none
    token_port: int = 0  # the token service (Distribution's auth: token realm), 0 for no authentication
    token_key: Path | None = None  # the key of the stack's access tokens (local_emulator.iam.access_tokens)

    @property
    def registry_host(self) -> str:
        """HOST:PORT as image names carry it, and as `gcr` messages name images."""
        return f"{self.host}:{self.port}"


class _Bridge(ThreadingHTTPServer):
    """The notification receiver; holds what the handler needs."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], publisher: TopicPublisher, registry_host: str) -> None:
        super().__init__(address, _NotificationHandler)
        self.publisher = publisher
        self.registry_host = registry_host


class _NotificationHandler(BaseHTTPRequestHandler):
    server: _Bridge

    def do_POST(self) -> None:
        if self.path != EVENTS_PATH:
            self._answer(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            envelope = json.loads(self.rfile.read(length) or b"{}")
            messages = gcr_messages(envelope, self.server.registry_host)
        except (ValueError, AttributeError) as error:
            _log.error("unreadable registry notification", extra={"error": str(error)})
            self._answer(400)
            return
        try:
            for message in messages:
                message_id = self.server.publisher.publish(message.to_json(), {})
                _log.info(
                    "published gcr message",
                    extra={
                        "action": message.action,
                        "digest": message.digest,
                        "tag": message.tag,
                        "message_id": message_id,
                    },
                )
        except Exception as error:  # any non-2xx makes the registry retry the envelope
            _log.error("publish to gcr failed; the registry will retry", extra={"error": repr(error)})
            self._answer(503)
            return
        self._answer(200)

    def _answer(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


def _registry_ready(url: str, child: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except urllib.error.HTTPError as answer:
            if answer.code == 401:  # token auth: the API base answers with its challenge
                return True
            time.sleep(0.05)
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    return False


def _start_tokens(settings: Settings) -> tuple[Any, TokenAuth]:
    """The token service on ``settings.token_port`` and the auth config that makes the registry trust it."""
    from local_emulator.iam import policy as iam_policy
    from local_emulator.iam.access_tokens import Minter
    from local_emulator.registry.tokens import ISSUER, Signer, TokenService

    if settings.token_key is None:
        raise ValueError("--token-port needs --token-key (the key of the stack's access tokens)")
    signer = Signer()
    # Only the repository grants matter here; the buckets are named as the stack names them.
    policy = iam_policy.load(settings.project, "", "")
    service = TokenService(
        (settings.host, settings.token_port),
        signer,
        Minter.from_file(settings.token_key),
        policy,
        service=settings.registry_host,
    )
    service.serve_in_background()
    bundle = signer.write_bundle(settings.state_dir / "token-root.pem")
    return service, TokenAuth(service.realm, settings.registry_host, ISSUER, bundle)


def serve(settings: Settings, stop: threading.Event) -> int:
    """Run registry and bridge until stop is set or the registry dies; return the exit code."""
    state_dir = settings.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    registry_host = settings.registry_host
    bridge = _Bridge(("127.0.0.1", 0), TopicPublisher(settings.project, settings.topic), registry_host)
    bridge_thread = threading.Thread(target=bridge.serve_forever, name="bridge", daemon=True)
    bridge_thread.start()
    notify_url = f"http://127.0.0.1:{bridge.server_address[1]}{EVENTS_PATH}"
    config_path = state_dir / "config.yml"  # JSON is YAML
    tokens, auth = _start_tokens(settings) if settings.token_port else (None, None)
    config = registry_config(address=registry_host, data_dir=state_dir / "data", notify_url=notify_url, auth=auth)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    with (state_dir / "docker-registry.log").open("ab") as registry_log:
        child = subprocess.Popen(
            [settings.registry_binary, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=registry_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    code = 0
    front = None
    try:
        if not _registry_ready(f"http://{registry_host}/v2/", child, timeout=15):
            _log.error(
                "registry did not become ready",
                extra={"log": str(state_dir / "docker-registry.log"), "exit_code": child.poll()},
            )
            return 1
        _log.info(
            "ready",
            extra={
                "registry": registry_host,
                "notifications": notify_url,
                "topic": bridge.publisher.topic_path,
                "pid": child.pid,
                "token_realm": auth.realm if auth else None,
            },
        )
        if settings.api_port:
            from local_emulator.registry.front import Front

            front = Front((settings.host, settings.api_port), registry_host)
            front.serve_in_background()
        while not stop.wait(0.5):
            if child.poll() is not None:
                _log.error("docker-registry exited", extra={"exit_code": child.returncode})
                code = 1
                break
        return code
    finally:
        _log.info("stopping")
        kill_process_group(child)
        if front is not None:
            front.shutdown()
        if tokens is not None:
            tokens.shutdown()
        bridge.shutdown()
        bridge.server_close()
        bridge.publisher.close()
        _log.info("stopped")


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Settings from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m local_emulator.registry", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="registry config, blobs and log")
    parser.add_argument("--project", required=True, help="project whose gcr topic receives push messages")
    parser.add_argument("--topic", default="gcr")
    parser.add_argument("--api-port", type=int, default=0, help="serve the chaos session's API front on this port")
    parser.add_argument(
        "--token-port", type=int, default=0, help="serve the token realm here; the registry needs tokens"
    )
    parser.add_argument("--token-key", type=Path, default=None, help="the key of the stack's access tokens")
    parser.add_argument("--registry-binary", default=shutil.which("docker-registry") or "/usr/bin/docker-registry")
    args = parser.parse_args(argv)
    return Settings(
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        project=args.project,
        topic=args.topic,
        registry_binary=args.registry_binary,
        api_port=args.api_port,
        token_port=args.token_port,
        token_key=args.token_key,
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    configure_logging("registry")
    stop = stop_event_on_signals()
    require_env("PUBSUB_EMULATOR_HOST", _log)
    return serve(settings, stop)
