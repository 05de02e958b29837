"""The local stand-in for python:3.11-slim offers what Dockerfiles written for that image rely on.

The reference is the official image's Dockerfile (docker-library/python, `3.11/slim-bookworm/Dockerfile`):
Python with pip on PATH as `python`, `python3` and `pip`, no PEP 668 `EXTERNALLY-MANAGED` marker (pip
installs into the system interpreter), ca-certificates, netbase and tzdata on debian:bookworm-slim (which
has libstdc++6, needed by manylinux wheels such as scipy's). The marked test builds the image with
mmdebstrap (~15 s, then cached) and reads its one layer.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from local_emulator.containers.baseimage import BaseImageSpec, default_cache_dir, ensure_base_image

_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def test_a_new_local_anchor_changes_the_cache_key(tmp_path: Path) -> None:
    spec = BaseImageSpec(local_anchors=str(tmp_path))
    before = spec.key
    (tmp_path / "proxy.crt").write_text(_CERT)
    assert spec.key != before
    assert spec.anchors() == (_CERT + "\n").encode()
    assert BaseImageSpec(local_anchors="").anchors() == b""


@pytest.mark.emulator
def test_the_base_has_python_pip_certificates_and_no_pep668_marker() -> None:
    image = ensure_base_image(BaseImageSpec(), default_cache_dir())
    [layer] = [p for p in (image.layout / "blobs" / "sha256").iterdir() if p.stat().st_size > 10_000_000]
    with tarfile.open(layer) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
        bundle = tar.extractfile(members["etc/ssl/certs/ca-certificates.crt"])
        assert bundle is not None
        certificates = bundle.read().decode()
    assert members["usr/bin/python"].linkname == "python3"
    assert "usr/bin/pip" in members and "usr/bin/python3" in members and "bin/sh" in members
    assert not [name for name in members if name.endswith("EXTERNALLY-MANAGED")]
    assert certificates.count("BEGIN CERTIFICATE") > 100  # Mozilla's set, as update-ca-certificates makes it
    assert BaseImageSpec().anchors().decode().strip() in certificates  # and this machine's own anchors
    assert any(name.endswith("libstdc++.so.6") for name in members)
