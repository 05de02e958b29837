"""The local registry with Distribution's token auth and the token service that grants from terraform/iam_bindings.yaml,
driven by the functions' own client (cd4ml.registry) and by skopeo, as Cloud Build pushes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from local_emulator.common import processes
from local_emulator.iam import access_tokens
from local_emulator.iam.access_tokens import Minter

from cd4ml import identities
from cd4ml import registry as docker_registry
from cd4ml.errors import RetryableError
from tests.standins.test_local_registry import PUBSUB_EMULATOR, _tiny_image

pytestmark = pytest.mark.emulator
PROJECT = "registry-auth-test"


@dataclass(frozen=True)
class Registry:
    host: str
    minter: Minter

    def push(self, tmp: Path, image: str, identity: str) -> subprocess.CompletedProcess[str]:
        """skopeo copy of a tiny image to ``HOST/image`` with ``identity``'s access token, as Cloud Build pushes;
        the digest is left in ``tmp/digest``."""
        work = Path(tempfile.mkdtemp(dir=tmp))
        return subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                f"oauth2accesstoken:{self.minter.mint(identity)}",
                "--digestfile",
                str(tmp / "digest"),
                _tiny_image(work),
                f"docker://{self.host}/{image}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """Pub/Sub emulator (the gcr bridge publishes there) + the registry with token auth; stopped by pid after."""
    tmp = tmp_path_factory.mktemp("registry-auth")
    key = access_tokens.new_key(tmp / "token.key")
    pubsub_port, registry_port, token_port = processes.free_port(), processes.free_port(), processes.free_port()
    pids: list[int] = []
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub_port}"}
    try:
        pids.append(
            processes.start(
                "pubsub", [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={pubsub_port}"], env=env, log_dir=tmp
            )
        )
        processes.wait_until(lambda: processes.port_open(pubsub_port), what="pubsub", timeout=30, pid=pids[0])
        argv = [
            sys.executable,
            "-m",
            "local_emulator.registry",
            "--port",
            str(registry_port),
            "--state-dir",
            str(tmp / "state"),
            "--project",
            PROJECT,
            "--token-port",
            str(token_port),
            "--token-key",
            str(key),
        ]
        pids.append(processes.start("registry", argv, env=env, log_dir=tmp))
        processes.wait_until(
            lambda: processes.port_open(registry_port) and processes.port_open(token_port),
            what="registry",
            timeout=20,
            pid=pids[1],
            log=tmp / "registry.log",
        )
        yield Registry(f"127.0.0.1:{registry_port}", Minter.from_file(key))
    finally:
        for pid in reversed(pids):
            processes.stop(pid)


class _Recording(requests.Session):
    """A session that notes each request's method, path and answer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, int]] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().request(method, url, *args, **kwargs)
        path = str(url).split("/", 3)[-1].split("?")[0]
        self.calls.append((str(method), path, response.status_code))
        return response


def _pushed(registry: Registry, tmp: Path, image: str) -> str:
    result = registry.push(tmp, image, "admin")
    assert result.returncode == 0, result.stderr
    return (tmp / "digest").read_text().strip()


def test_the_api_asks_for_a_token_and_anonymous_token_requests_are_refused(local_registry: Registry) -> None:
    with pytest.raises(urllib.error.HTTPError) as challenge:
        urllib.request.urlopen(f"http://{local_registry.host}/v2/", timeout=5)
    assert challenge.value.code == 401
    assert challenge.value.headers["WWW-Authenticate"].startswith('Bearer realm="http://')
    realm = challenge.value.headers["WWW-Authenticate"].split('"')[1]
    anonymous = requests.get(realm, params={"scope": "repository:cd4ml-digits/digits:pull"}, timeout=5)
    assert anonymous.status_code == 401
    assert "oauth2accesstoken" in anonymous.json()["errors"][0]["message"]


def test_promote_moves_the_alias_with_a_read_write_token(local_registry: Registry, tmp_path: Path) -> None:
    digest = _pushed(local_registry, tmp_path, "cd4ml-promoted/promoted:run-1")
    session = _Recording()
    client = docker_registry.RegistryClient(
        token=lambda: local_registry.minter.mint("function:promote"), session=session
    )
    repo = docker_registry.Repository.of(
        f"{local_registry.host}/cd4ml-promoted/promoted@{digest}", f"http://{local_registry.host}"
    )

    assert client.digest(repo, "champion") is None
    client.tag(repo, digest, "champion")

    assert client.digest(repo, "champion") == digest
    scopes = [c for c in session.calls if c[1] == "v2/token"]
    assert len(scopes) == 2  # one pull token for the HEAD, one pull,push token asked before the write
    assert ("PUT", "v2/cd4ml-promoted/promoted/manifests/champion", 201) in session.calls


def test_a_read_scoped_write_is_refused_and_recovered_by_a_new_challenge(
    local_registry: Registry, tmp_path: Path
) -> None:
    digest = _pushed(local_registry, tmp_path, "cd4ml-rescoped/rescoped:run-1")
    realm = f"http://{local_registry.host}/v2/"
    with pytest.raises(urllib.error.HTTPError) as challenge:
        urllib.request.urlopen(realm, timeout=5)
    token_url = challenge.value.headers["WWW-Authenticate"].split('"')[1]
    password = local_registry.minter.mint("function:promote")
    read_token = requests.get(
        token_url,
        params={"service": local_registry.host, "scope": "repository:cd4ml-rescoped/rescoped:pull"},
        auth=("oauth2accesstoken", password),
        timeout=5,
    ).json()["token"]
    manifest = requests.get(
        f"{realm}cd4ml-rescoped/rescoped/manifests/{digest}",
        headers={"Authorization": f"Bearer {read_token}", "Accept": ", ".join(docker_registry.MANIFEST_TYPES)},
        timeout=5,
    )
    refused = requests.put(
        f"{realm}cd4ml-rescoped/rescoped/manifests/champion",
        data=manifest.content,
        headers={"Authorization": f"Bearer {read_token}", "Content-Type": manifest.headers["Content-Type"]},
        timeout=5,
    )
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert 'scope="repository:cd4ml-rescoped/rescoped:pull,push"' in refused.headers["WWW-Authenticate"]

    # The client holding that read token where it expects a read-write one (the bug: one token per host, from the
    # HEAD) is refused on the PUT, asks the realm again for the scope the challenge names, and writes.
    session = _Recording()
    client = docker_registry.RegistryClient(token=lambda: password, session=session)
    repo = docker_registry.Repository.of(f"{local_registry.host}/cd4ml-rescoped/rescoped@{digest}", realm[:-4])
    assert client.digest(repo, "champion") is None  # learns the realm
    client._tokens[(local_registry.host, "repository:cd4ml-rescoped/rescoped:pull,push")] = (read_token, float("inf"))
    client.tag(repo, digest, "champion")

    puts = [c for c in session.calls if c[0] == "PUT"]
    assert puts == [
        ("PUT", "v2/cd4ml-rescoped/rescoped/manifests/champion", 401),
        ("PUT", "v2/cd4ml-rescoped/rescoped/manifests/champion", 201),
    ]
    assert client.digest(repo, "champion") == digest


def test_an_identity_without_a_registry_role_gets_a_token_without_actions_and_cannot_write(
    local_registry: Registry, tmp_path: Path
) -> None:
    digest = _pushed(local_registry, tmp_path, "cd4ml-guarded/guarded:run-1")
    client = docker_registry.RegistryClient(token=lambda: local_registry.minter.mint("function:evaluate"))
    repo = docker_registry.Repository.of(
        f"{local_registry.host}/cd4ml-guarded/guarded@{digest}", f"http://{local_registry.host}"
    )
    with pytest.raises(RetryableError, match="HTTP 401"):
        client.tag(repo, digest, "champion")
    assert (
        docker_registry.RegistryClient(token=lambda: local_registry.minter.mint("admin")).digest(repo, "champion")
        is None
    )


def test_a_models_build_account_pushes_its_own_repository_and_is_refused_on_another_models(
    local_registry: Registry, tmp_path: Path
) -> None:
    """Model A's build (the account build_image names for A, as the Cloud Build stand-in presents it) cannot push
    REGISTRY/B nor move B's alias; its own repository it can."""
    build_a = f"build:{identities.account_id('build', 'alpha')}"
    own = local_registry.push(tmp_path, "cd4ml-alpha/alpha:alpha-20260101t000000z", build_a)
    assert own.returncode == 0, own.stderr

    refused = local_registry.push(tmp_path, "cd4ml-beta/beta:beta-20260101t000000z", build_a)
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "denied" in refused.stderr.lower(), refused.stderr

    digest = _pushed(local_registry, tmp_path, "cd4ml-beta/beta:beta-20260101t000000z")
    repo = docker_registry.Repository.of(
        f"{local_registry.host}/cd4ml-beta/beta@{digest}", f"http://{local_registry.host}"
    )
    client = docker_registry.RegistryClient(token=lambda: local_registry.minter.mint(build_a))
    with pytest.raises(RetryableError, match="HTTP 401"):
        client.tag(repo, digest, "champion")
    beta_build = docker_registry.RegistryClient(
        token=lambda: local_registry.minter.mint(f"build:{identities.account_id('build', 'beta')}")
    )
    beta_build.tag(repo, digest, "champion")  # B's own build account may
    assert beta_build.digest(repo, "champion") == digest
