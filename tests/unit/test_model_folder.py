"""A model folder as `cd4ml model push` packs it: the same source gives the same bytes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

from cd4ml_cli import models

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


def _copy(to: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, to, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")))


def test_an_unchanged_trainer_packs_to_the_same_bytes_whenever_and_wherever_it_is_packed(tmp_path: Path) -> None:
    first = models.sdist(_copy(tmp_path / "a"), "trainer-0.1.0.tar.gz")
    time.sleep(1.1)  # a gzip header with a time differs from one second to the next
    copy = _copy(tmp_path / "b")
    for path in copy.rglob("*"):
        os.utime(path, (time.time(), time.time()))  # a fresh checkout: every file's mtime is new
    (copy / "trainer" / "__pycache__").mkdir(exist_ok=True)
    (copy / "trainer" / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"bytecode")
    (copy / "trainer.egg-info").mkdir()
    (copy / "trainer.egg-info" / "PKG-INFO").write_text("Name: trainer\n")
    second = models.sdist(copy, "trainer-0.1.0.tar.gz")
    assert hashlib.md5(first).hexdigest() == hashlib.md5(second).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(second)) as tar:
        names = tar.getnames()
    assert names == sorted(names) and "trainer-0.1.0/setup.py" in names and "trainer-0.1.0/trainer/task.py" in names
    assert not any("serving" in n or "manifest.yaml" in n or "egg-info" in n for n in names)


def test_a_changed_trainer_packs_to_other_bytes(tmp_path: Path) -> None:
    folder = _copy(tmp_path / "a")
    before = models.sdist(folder, "trainer-0.1.0.tar.gz")
    (folder / "trainer" / "task.py").write_text((folder / "trainer" / "task.py").read_text() + "\n# changed\n")
    assert models.sdist(folder, "trainer-0.1.0.tar.gz") != before
