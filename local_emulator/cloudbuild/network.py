"""The networks a local build step's container gets: Cloud Build's ``cloudbuild`` network, or Docker's ``none``.

On Cloud Build "each build step is run with its container attached to a local Docker network named cloudbuild",
where the metadata server answers (https://cloud.google.com/build/docs/build-config-file-schema#network): a step's
code gets the build service account's access token from ``http://metadata.google.internal`` (169.254.169.254), as
Cloud Build's own local runner wires it (GoogleCloudPlatform/cloud-build-local, metadata/metadata.go: the metadata
container joins the ``cloudbuild`` network as ``metadata`` and ``metadata.google.internal``). A container a docker
step starts with ``docker run --network=none`` has a loopback interface and nothing else (Docker's ``none``
network driver), so no metadata server and no token.

Locally each step runs in a network namespace of its own (``unshare --net``: its own loopback, so steps of
concurrent builds can each listen on 8080). ``cloudbuild`` adds 169.254.169.254:80 inside it, relayed over a Unix
socket (which crosses network namespaces) to a metadata server of the build's own service account that the
stand-in runs for the build (``serve_metadata``). ``none`` is the namespace with loopback only. Unlike Cloud Build's
network, the local ``cloudbuild`` network routes nowhere else (no registry, no internet): the token is what a step
could write with, and it is served exactly as in production.

    python -m local_emulator.cloudbuild.network SOCKET -- ARGV...   (inside the step's fresh network namespace)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

from local_emulator.iam.access_tokens import Minter
from local_emulator.iam.metadata_server import MetadataServer

#: Where a Compute Engine (and Cloud Build) metadata server answers, by address and by name.
METADATA_IP = "169.254.169.254"
METADATA_HOSTS = ("metadata.google.internal", "metadata")
#: Docker network names a local step's container may be given (``docker run --network``).
NONE = "none"
CLOUDBUILD = "cloudbuild"


class _SocketMetadataServer(MetadataServer):
    """The metadata server of one identity on a Unix socket (the relay in a step's namespace connects to it)."""

    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        self.socket.bind(self.server_address)
        self.server_name, self.server_port = "metadata.google.internal", 80

    def get_request(self) -> tuple[Any, Any]:
        connection, _ = self.socket.accept()
        return connection, ("cloudbuild-step", 0)  # BaseHTTPRequestHandler logs client_address[0]


@contextmanager
def serve_metadata(identity: str, email: str, project: str, minter: Minter) -> Iterator[Path]:
    """A metadata server of ``identity`` (``email``) on a fresh Unix socket for as long as the block runs; its path."""
    folder = Path(tempfile.mkdtemp(prefix="cd4ml-md-"))  # short: a socket path is at most 107 bytes
    path = folder / "s"
    server = _SocketMetadataServer(cast(Any, str(path)), identity, email, project, minter)
    server.serve_in_background()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(folder, ignore_errors=True)


def isolated(argv: Sequence[str], network: str, metadata: Path | None) -> list[str]:
    """argv in a new network namespace: loopback only (``none``, or ``cloudbuild`` when the build has no account
    to serve), or loopback plus the build account's metadata server at 169.254.169.254 (``cloudbuild``)."""
    if network == CLOUDBUILD and metadata is not None:
        return ["unshare", "--net", "--", sys.executable, "-m", __name__, str(metadata), "--", *argv]
    ip = shutil.which("ip") or "/usr/sbin/ip"
    return ["unshare", "--net", "--", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh", *argv]


def hosts(network: str, metadata: Path | None) -> list[str]:
    """``buildah from`` options naming the metadata server, as the ``cloudbuild`` network's aliases do."""
    if network != CLOUDBUILD or metadata is None:
        return []
    return [option for name in METADATA_HOSTS for option in ("--add-host", f"{name}:{METADATA_IP}")]


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _relay(listener: socket.socket, metadata: str) -> None:
    """Each connection to 169.254.169.254:80, both ways, to the metadata server's Unix socket."""
    while True:
        client, _ = listener.accept()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.connect(metadata)
        except OSError:
            client.close()
            server.close()
            continue
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=_pipe, args=(source, target), daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    """Inside a fresh network namespace: loopback up, 169.254.169.254:80 relayed to SOCKET, then run the command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m local_emulator.cloudbuild.network SOCKET -- ARGV...", file=sys.stderr)
        return 2
    metadata, command = args[0], args[2:]
    ip = shutil.which("ip") or "/usr/sbin/ip"
    for setup in (["link", "set", "lo", "up"], ["addr", "add", f"{METADATA_IP}/32", "dev", "lo"]):
        subprocess.run([ip, *setup], check=True)
    listener = socket.create_server((METADATA_IP, 80), backlog=64)
    threading.Thread(target=_relay, args=(listener, metadata), daemon=True).start()
    sys.stdout.flush()
    return subprocess.run(command, check=False).returncode  # its exit code is the step's


if __name__ == "__main__":
    sys.exit(main())
