"""The web view in a real headless Chromium (Debian's chromium, driven by Playwright) after runs on the local stack."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Pipeline

pytest.importorskip("playwright", reason="Playwright drives the system Chromium (installed by nox -s e2e)")
if not Path("/usr/bin/chromium").exists():
    pytest.skip("Debian's chromium is not installed (nox -s e2e installs it)", allow_module_level=True)

from cd4ml_ui.screenshots import browser

#: A long flow: `nox -s e2e` runs it (CI does), the README's test command does not.
pytestmark = pytest.mark.flow


def _stages(run: dict[str, Any]) -> set[str]:
    """The stages that recorded an event on the run, by the event's source, the request that opened it, and the
    stage that submitted its build (recorded as the build's progress, with no event of its own)."""
    built = {"build_image"} if (run.get("image") or {}).get("progress") else set()
    return (
        {"request"}
        | built
        | {
            str(e.get("source", "")).rsplit("/functions/", 1)[1]
            for e in run["events"]
            if "/functions/" in str(e.get("source"))
        }
    )


def test_the_runs_the_stack_made_are_shown_as_they_happen(pipeline: Pipeline, tmp_path: Path) -> None:
    ui = pipeline.stack.endpoints["ui"].rstrip("/")
    strict = pipeline.push_variant(tmp_path, "digits-ui-strict", lambda m: m["evaluation"].update(threshold=0.9999))
    with browser() as page:
        page.goto(f"{ui}/runs")
        run_id = pipeline.request("digits")
        # Live: the new run appears in the open table without a reload (the page polls).
        page.wait_for_selector(f'#runs-rows tr[data-run="{run_id}"]', timeout=60_000)
        run = pipeline.wait(run_id, timeout=480)
        assert run["status"] == "succeeded"
        failed = pipeline.wait(pipeline.request(strict), timeout=300)
        assert failed["status"] == "failed"

        page.goto(f"{ui}/runs")
        row = page.locator(f'#runs-rows tr[data-run="{run_id}"]')
        assert "succeeded" in row.inner_text() and "model.promoted" in row.inner_text()
        failed_row = page.locator(f'#runs-rows tr[data-run="{failed["run_id"]}"]').inner_text()
        assert failed["error"]["message"] in failed_row  # a failed run shows its reason in the table

        # Keyboard: the first Tab reaches the skip link, Enter moves to the content; links are real links.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        row.locator("th a").focus()
        page.keyboard.press("Enter")
        page.wait_for_url(f"{ui}/runs/{run_id}")

        shown = set(
            page.locator("table.timeline tr[data-stage]").evaluate_all("rows => rows.map(r => r.dataset.stage)")
        )
        assert shown == _stages(run)
        assert page.locator("svg.gantt rect").count() == len(shown)
        lineage = page.locator("ol.lineage").inner_text()
        assert run["image"]["digest"] in lineage and run["training"]["job"] in lineage
        assert run["dataset"]["sha256"] in lineage and run["canary"]["execution_id"] in lineage
        assert page.locator('ol.lineage [data-node="alias move"]').inner_text().count(run["image"]["digest"]) >= 1

        page.goto(f"{ui}/runs/{failed['run_id']}")
        assert failed["error"]["message"] in page.locator(".reason-box").inner_text()

        page.goto(f"{ui}/models/digits")
        evaluated = [r for r in pipeline.ledger.recent(200, "digits") if (r.get("evaluation") or {}).get("gate")]
        points = page.locator("svg.plot a.point").evaluate_all("ps => ps.map(p => p.dataset.run)")
        assert sorted(points) == sorted(r["run_id"] for r in evaluated)
        champion = page.locator("svg.plot a.point.champion").get_attribute("data-run")
        assert champion == run["run_id"]
        assert re.search(r"threshold 0\.9\b", page.locator("svg.plot").text_content() or "")
