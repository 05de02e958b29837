"""Pictures of the web view in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

``python -m cd4ml_ui.screenshots URL OUT_DIR`` writes runs.png, run.png and model.png of the newest run;
``browser()`` is the one place the launch flags live (the e2e tests use it too). Playwright drives the system
browser by ``executable_path``: its own browser downloads are not used.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
#: Flags for a sandbox-less, offline machine: no GPU, no QUIC, no first-run, sync or update traffic.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@contextmanager
def browser(executable: str = CHROMIUM) -> Iterator[Any]:
    """A Playwright page in headless Chromium with an empty profile, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="cd4ml-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(FLAGS),
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def take(base_url: str, out: Path) -> list[Path]:
    """Screenshots of the runs table, the newest run and its model under ``out``; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with browser() as page:
        page.goto(base_url.rstrip("/") + "/runs")
        page.wait_for_selector("table.runs")
        written.append(_shot(page, out / "runs.png"))
        newest = page.locator("#runs-rows tr[data-run] th a").first
        if newest.count() == 0:
            return written
        model = page.locator("#runs-rows tr[data-run] td a").first.inner_text()
        newest.click()
        page.wait_for_selector("section [data-node]")
        written.append(_shot(page, out / "run.png"))
        page.goto(base_url.rstrip("/") + f"/models/{model}")
        written.append(_shot(page, out / "model.png"))
    return written


def _shot(page: Any, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cd4ml_ui.screenshots", description=__doc__)
    parser.add_argument("url", help="the web view's address, e.g. http://127.0.0.1:8780/")
    parser.add_argument("out", type=Path, help="folder for the PNG files")
    args = parser.parse_args(argv)
    if not re.match(r"https?://", args.url):
        parser.error(f"{args.url!r} is not an http(s) address")
    for path in take(args.url, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
