"""One Settings per process, read once from the environment; the variables are listed in catalog.yaml."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cd4ml import catalog
from cd4ml.errors import InvalidSettings


@dataclass(frozen=True)
class Settings:
    """Where things are. Only endpoints and names live here: stage logic never asks "am I local?"."""

    project: str
    region: str
    stage: str
    dead_letter_topic: str
    firestore_database: str
    data_bucket: str
    artifact_bucket: str
    vertex_endpoint: str
    training_service_account: str
    cloudbuild_endpoint: str
    build_service_account: str
    registry: str
    registry_api: str
    gate_url: str
    gate_auth: str
    gate_key_secret: str
    gate_confirm_seconds: str
    notify_secrets: str
    approval_policy: str = ""
    decision_audiences: str = ""
    token_certs_url: str = "https://www.googleapis.com/oauth2/v1/certs"
    decision_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: os.environ); every missing required variable is named."""
        env = os.environ if env is None else env
        values: dict[str, str] = {}
        missing: list[str] = []
        for setting in catalog.load().settings:
            value = env.get(setting.name, setting.default)
            if value is None or (setting.required and not value):
                missing.append(f"{setting.name} ({setting.doc})")
                value = ""
            values[setting.name.removeprefix("CD4ML_").lower()] = value
        if missing:
            raise InvalidSettings("missing environment variables: " + "; ".join(missing))
        return cls(**values)

    @property
    def location(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"


@functools.cache
def current() -> Settings:
    """The settings of this process."""
    return Settings.from_env()
