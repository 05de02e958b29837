"""The local stack's IAM: per identity, a Pub/Sub (gRPC) port and a Cloud Storage (HTTP) port in front of the emulators.

Each function process gets its own identity's two ports as PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST, so the
unchanged code is refused locally what Terraform does not grant it in production (``local_emulator.iam.policy``: the grants of
terraform/iam_bindings.yaml over the catalog). One process serves every identity:

    python -m local_emulator.iam_proxy --project P --data-bucket D --artifact-bucket A \\
        --pubsub-upstream 127.0.0.1:PORT --storage-upstream http://127.0.0.1:PORT \\
        --token-key FILE --identity function:fetch_data=PUBSUB_PORT,STORAGE_PORT,METADATA_PORT [--identity ...]

Each identity also gets a metadata server (``local_emulator.iam.metadata_server``: ``GCE_METADATA_HOST``), whose access tokens name it
(``local_emulator.iam.access_tokens``, signed with ``--token-key``): what the local registry's token service takes as its credential.
An open port means ready. Identities: ``function:STAGE``, ``training``, ``build``, ``admin`` (unrestricted,
but still held to Pub/Sub's publish limits).
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from local_emulator.common import processes
from local_emulator.common.service import configure_logging, stop_event_on_signals
from local_emulator.iam import policy as iam_policy
from local_emulator.iam.access_tokens import Minter
from local_emulator.iam.metadata_server import MetadataServer
from local_emulator.iam.policy import Policy
from local_emulator.pubsub.proxy import CHANNEL_OPTIONS, PubSubProxy
from local_emulator.storage.notifications import Notifications
from local_emulator.storage.proxy import StorageProxy


@dataclass(frozen=True)
class Listener:
    identity: str
    pubsub_port: int
    storage_port: int
    metadata_port: int = 0

    @classmethod
    def parse(cls, text: str) -> Listener:
        """``IDENTITY=PUBSUB_PORT,STORAGE_PORT[,METADATA_PORT]``."""
        identity, _, ports = text.rpartition("=")
        pubsub, storage, *metadata = ports.split(",")
        return cls(identity, int(pubsub), int(storage), int(metadata[0]) if metadata else 0)


class Proxies:
    """Every identity's servers, started together and stopped together."""

    def __init__(
        self,
        policy: Policy,
        pubsub_upstream: str,
        storage_upstream: str,
        host: str = "127.0.0.1",
        minter: Minter | None = None,
    ) -> None:
        self._policy = policy
        self._minter = minter
        self._metadata: list[MetadataServer] = []
        self._pubsub_upstream = pubsub_upstream
        self._storage_upstream = storage_upstream
        self._host = host
        self._grpc: list[grpc.Server] = []
        self._http: list[StorageProxy] = []
        # Cloud Storage's bucket notifications: one store for every identity's port, as a bucket has one config list.
        self._notifications = Notifications(pubsub_upstream, policy)

    def add(self, listener: Listener) -> None:
        known = self._policy.identities()
        if listener.identity not in known:
            raise ValueError(f"unknown identity {listener.identity!r}; iam_bindings.yaml grants {', '.join(known)}")
        # No SO_REUSEPORT (gRPC's default on Linux): a port another process holds must fail here, not be shared.
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
            handlers=[PubSubProxy(self._pubsub_upstream, listener.identity, self._policy)],
        )
        server.add_insecure_port(f"{self._host}:{listener.pubsub_port}")
        server.start()
        self._grpc.append(server)
        http = StorageProxy(
            (self._host, listener.storage_port),
            self._storage_upstream,
            listener.identity,
            self._policy,
            self._notifications,
            self._minter,
        )
        threading.Thread(target=http.serve_forever, name=f"storage-{listener.identity}", daemon=True).start()
        self._http.append(http)
        if listener.metadata_port and self._minter is not None:
            metadata = MetadataServer(
                (self._host, listener.metadata_port),
                listener.identity,
                self._policy.principal(listener.identity),
                self._policy.project,
                self._minter,
            )
            metadata.serve_in_background()
            self._metadata.append(metadata)

    def stop(self) -> None:
        for server in self._grpc:
            server.stop(grace=0)
        # All at once: each shutdown() waits for its serve_forever loop's next poll (0.5 s), and with a listener per
        # model identity one after another outlasted `local down`'s 10 s grace.
        servers = [*self._http, *self._metadata]
        closing = [threading.Thread(target=http.shutdown, daemon=True) for http in servers]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join(timeout=5)
        for http in servers:
            http.server_close()


def command(
    project: str,
    data_bucket: str,
    artifact_bucket: str,
    pubsub_upstream: str,
    storage_upstream: str,
    token_key: Path | None = None,
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The argv that serves every identity on free ports, and each identity's endpoints (the env values): Pub/Sub,
    Cloud Storage and, with ``token_key``, its metadata server."""
    argv = [
        sys.executable,
        "-m",
        "local_emulator.iam_proxy",
        "--project",
        project,
        "--data-bucket",
        data_bucket,
        "--artifact-bucket",
        artifact_bucket,
        "--pubsub-upstream",
        pubsub_upstream,
        "--storage-upstream",
        storage_upstream,
    ]
    if token_key is not None:
        argv += ["--token-key", str(token_key)]
    endpoints: dict[str, dict[str, str]] = {}
    for identity in iam_policy.load(project, data_bucket, artifact_bucket).identities():
        pubsub, storage = processes.free_port(), processes.free_port()
        endpoints[identity] = {
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub}",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{storage}",
        }
        if token_key is None:
            argv += ["--identity", f"{identity}={pubsub},{storage}"]
            continue
        metadata = processes.free_port()
        argv += ["--identity", f"{identity}={pubsub},{storage},{metadata}"]
        # google-auth: GCE_METADATA_HOST serves computeMetadata/v1/, GCE_METADATA_IP answers the ping.
        endpoints[identity] |= {
            "GCE_METADATA_HOST": f"127.0.0.1:{metadata}",
            "GCE_METADATA_IP": f"127.0.0.1:{metadata}",
        }
    return argv, endpoints


def ready(endpoints: dict[str, dict[str, str]]) -> bool:
    """True once every identity's two ports accept connections."""
    ports = [int(value.rsplit(":", 1)[1]) for env in endpoints.values() for value in env.values()]
    return all(processes.port_open(port) for port in ports)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--data-bucket", required=True)
    parser.add_argument("--artifact-bucket", required=True)
    parser.add_argument("--pubsub-upstream", required=True, help="HOST:PORT of the Pub/Sub emulator")
    parser.add_argument("--storage-upstream", required=True, help="http://HOST:PORT of the GCS emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--token-key", type=Path, default=None, help="signs the metadata servers' access tokens")
    parser.add_argument(
        "--identity",
        action="append",
        type=Listener.parse,
        default=[],
        help="IDENTITY=PUBSUB_PORT,STORAGE_PORT[,METADATA_PORT] (repeat)",
    )
    args = parser.parse_args(argv)
    log = configure_logging("iam_proxy")
    policy = iam_policy.load(args.project, args.data_bucket, args.artifact_bucket)
    minter = Minter.from_file(args.token_key) if args.token_key else None
    proxies = Proxies(policy, args.pubsub_upstream, args.storage_upstream, args.host, minter)
    for listener in args.identity:
        proxies.add(listener)
    log.info("IAM proxies listening", extra={"identities": [listener.identity for listener in args.identity]})
    stop_event_on_signals().wait()
    proxies.stop()
