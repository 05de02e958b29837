"""The local scheduler's jobs folder: a model pushed to the running stack gets its schedule, as terraform apply
adds a Cloud Scheduler job; an invalid file is left out, an unchanged job keeps its next fire time."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from local_emulator.scheduler import _jobs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_jobs_folder_is_read_again_and_each_valid_manifest_scheduled(tmp_path: Path) -> None:
    log = logging.getLogger("test-scheduler")
    now = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    (tmp_path / "digits.yaml").write_text((EXAMPLES / "digits" / "manifest.yaml").read_text())
    manifests, fires = _jobs([], tmp_path, [], {}, now, log)
    assert [m.name for m in manifests] == ["digits"] and fires["digits"] == datetime(2026, 12, 7, 3, 0, tzinfo=UTC)

    (tmp_path / "diabetes.yaml").write_text((EXAMPLES / "diabetes" / "manifest.yaml").read_text())
    (tmp_path / "broken.yaml").write_text("name: broken\n")
    kept = {**fires, "digits": fires["digits"] - timedelta(minutes=5)}  # as the loop left it
    manifests, fires = _jobs([], tmp_path, manifests, kept, now, log)
    assert sorted(m.name for m in manifests) == ["diabetes", "digits"]
    assert fires["digits"] == kept["digits"]  # unchanged job: its next fire time stands
    assert fires["diabetes"] == datetime(2026, 12, 7, 3, 30, tzinfo=UTC)
