"""Helpers for end-to-end tests: request runs through the CLI code path and wait for them in the ledger."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cd4ml import clients, ledger
from cd4ml.bus import Bus
from cd4ml.events import RUN_REQUESTED, Event, format_time, now
from cd4ml.run import TERMINAL
from cd4ml.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


class Pipeline:
    """The running stack as a user sees it: request runs, read the ledger, push variants of the example."""

    def __init__(self, stack: Any) -> None:
        from local_emulator import stack as local

        self.stack = stack
        self.env = local.client_env(stack)
        self.settings = Settings.from_env(self.env)
        os.environ.update({k: v for k, v in self.env.items() if not k.startswith("CD4ML_")})
        self.ledger = ledger.Ledger.firestore(clients.firestore_client(self.settings))
        self.bus = Bus(self.settings.project)

    @property
    def storage(self) -> Any:
        return clients.storage_client(self.settings)

    def registry_creds(self, identity: str = "admin") -> str:
        """``oauth2accesstoken:TOKEN`` of a stack identity: the registry has token auth (admin: the project owner)."""
        from local_emulator.iam.access_tokens import Minter
        from local_emulator.stack.parts import token_key

        return f"oauth2accesstoken:{Minter.from_file(token_key(self.stack)).mint(identity)}"

    def next_run_id(self, model: str) -> str:
        """The id of a run requested a moment from now: known before the request (to prepare the stand-ins)."""
        time.sleep(1.0)  # a fresh second: two runs of one model never share a slot
        return ledger.run_id(model, now().replace(microsecond=0) + timedelta(seconds=1))

    def request(self, model: str, run_id: str | None = None, *, cache: bool = False) -> str:
        """Request a run; a full one (``no_cache``: train, build, deliver) unless the test asks for the caches."""
        from cd4ml.run import RunId

        scheduled = RunId.parse(run_id).scheduled_time if run_id else now().replace(microsecond=0)
        run_id = ledger.run_id(model, scheduled)
        self.bus.publish(
            Event.new(
                RUN_REQUESTED,
                run_id,
                {
                    "model": model,
                    "scheduled_time": format_time(scheduled),
                    "trigger": "manual",
                    **({} if cache else {"no_cache": True}),
                },
                source="//tests",
            )
        )
        return run_id

    def wait(self, run_id: str, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.ledger.get(run_id)
            if run and run["status"] in TERMINAL:
                return run
            time.sleep(0.3)
        raise AssertionError(f"run {run_id} did not finish in {timeout} s: {self.ledger.get(run_id)}")

    def dead_lettered(self, stage: str, run_id: str, timeout: float = 60.0) -> list[str]:
        """The reasons ``stage`` dead-lettered messages of ``run_id`` with (read from its hold subscription, until
        there is one): a message names the run by its ce-subject, or (a registry notice has none) in its reason."""
        from google.cloud import pubsub_v1

        from cd4ml import catalog

        subscriber = pubsub_v1.SubscriberClient()
        hold = subscriber.subscription_path(self.settings.project, catalog.dead_letter_hold(stage))
        deadline, reasons = time.monotonic() + timeout, list[str]()
        while time.monotonic() < deadline and not reasons:
            pulled = subscriber.pull(request={"subscription": hold, "max_messages": 50}, timeout=10)
            for received in pulled.received_messages:
                attributes = received.message.attributes
                if attributes.get("ce-subject") == run_id or run_id in attributes.get("cd4ml-error", ""):
                    reasons.append(attributes.get("cd4ml-error", ""))
            time.sleep(0.3)
        return reasons

    def variant(self, tmp: Path, name: str, changes: dict[str, Any]) -> Path:
        """A copy of the example folder whose manifest sections are updated with ``changes`` (not pushed)."""
        folder = tmp / f"variant-{name}"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
        for section, values in changes.items():
            manifest[section].update(values)
        (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        return folder

    def push_variant(self, tmp: Path, name: str, change: Any, extra: dict[str, str] | None = None) -> str:
        """Push a copy of the example model under another name, its manifest changed by ``change``."""
        from local_emulator import stack as local

        folder = tmp / name
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
        manifest["name"] = name
        manifest["training"]["python_package"]["package_uris"] = [f"packages/{name}/trainer-0.1.0.tar.gz"]
        change(manifest)
        for relative, text in (extra or {}).items():
            (folder / relative).write_text(text)
        (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        return local.push_model(self.stack, folder)


@pytest.fixture(scope="session")
def pipeline(stack: Any) -> Pipeline:
    return Pipeline(stack)
