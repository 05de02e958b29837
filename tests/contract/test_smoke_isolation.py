"""The smoke test's container (`docker run --network=none`, the model's own serving code) reaches no host service:
no metadata server, no registry, no token. Locally such a container runs in a network namespace with loopback only."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest
from local_emulator.cloudbuild.container_step import _own_loopback

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")

CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3); print('reached')"


def test_a_step_cannot_reach_a_service_listening_on_the_hosts_loopback() -> None:
    """A host port (where the stack's metadata servers, registry and token service listen) answers the host, and not
    a command run as a container on Docker's `none` network is run."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = str(listener.getsockname()[1])
        host = subprocess.run([sys.executable, "-c", CONNECT, port], capture_output=True, text=True, timeout=30)
        assert host.returncode == 0 and "reached" in host.stdout
        step = subprocess.run(
            _own_loopback([sys.executable, "-c", CONNECT, port]), capture_output=True, text=True, timeout=30
        )
    assert step.returncode != 0 and "reached" not in step.stdout
    assert "ConnectionRefusedError" in step.stderr
