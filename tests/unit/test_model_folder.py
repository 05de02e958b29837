"""A model folder as `cd4ml model push` packs it: the same source gives the same bytes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from pathlib import Path

from cd4ml_models import folder as models

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


def test_a_bad_manifest_among_the_examples_is_reported_and_skipped_not_fatal(tmp_path: Path) -> None:
    from local_emulator.stack import usable_models

    good = _copy(tmp_path / "good")
    bad = _copy(tmp_path / "bad")
    (bad / "manifest.yaml").write_text((bad / "manifest.yaml").read_text().replace("threshold: 0.9", "threshold: x"))
    said: list[str] = []
    assert usable_models([bad, good], said.append) == [good]
    assert len(said) == 1 and said[0].startswith(f"model folder {bad} skipped: invalid {bad / 'manifest.yaml'}")
    assert "evaluation.threshold: 'x' is not of type 'number'" in said[0]
    assert said[0].endswith(f"fix it and run `cd4ml model push {bad}`")


def test_check_refuses_an_executor_image_vertex_lacks_and_a_module_the_package_lacks(tmp_path: Path) -> None:
    from cd4ml.errors import InvalidManifest

    folder = _copy(tmp_path / "m")
    text = (folder / "manifest.yaml").read_text()
    text = text.replace("sklearn-cpu.1-6:latest", "sklearn-cpu.1-5:latest").replace("trainer.task", "trainer.train")
    (folder / "manifest.yaml").write_text(text)
    models.read(folder)  # the schema alone accepts both
    try:
        models.check(folder)
    except InvalidManifest as refused:
        problems = refused.problems
    else:
        raise AssertionError("check accepted an executor image Vertex lacks")
    assert problems[0].startswith(
        "training.python_package.executor_image: 'us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.1-5:latest' is "
        "not one of Vertex AI's prebuilt training containers"
    )
    assert problems[1].startswith("training.python_package.python_module: trainer.train is not in the trainer package")
    assert models.check(_copy(tmp_path / "good")).name == "digits"
