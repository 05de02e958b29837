"""Per-model identities: the service accounts a model's builds and training jobs run as, and its image repository.

Terraform makes one build and one training account per model (terraform/catalog.tf ``model_accounts``, the same
rule), each allowed to touch only that model's objects and images, so one model's code cannot reach another's.
An account id is 6-30 characters of ``[a-z0-9-]`` starting with a letter
(https://cloud.google.com/iam/docs/service-accounts-create#creating): ``cd4ml-build-MODEL`` when it fits, else the
first 11 characters of the model (dashes trimmed), a dash and 6 hex digits of the name's sha256.
"""

from __future__ import annotations

import hashlib

KINDS = ("build", "train")
_MAX_ID = 30


def account_id(kind: str, model: str) -> str:
    """The account id of ``model``'s ``kind`` ("build" or "train") identity."""
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r}; expected one of {', '.join(KINDS)}")
    short = f"cd4ml-{kind}-{model}"
    if len(short) <= _MAX_ID:
        return short
    return f"cd4ml-{kind}-{model[:11].rstrip('-')}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def service_account(template: str, kind: str, model: str) -> str:
    """The email a setting names for ``model``: ``{account}`` in ``template`` stands for its account id."""
    return template.replace("{account}", account_id(kind, model))


def model_registry(registry: str, model: str) -> str:
    """The model's own repository: ``REGISTRY`` with ``{model}`` standing for the model (a repository per model)."""
    return registry.rstrip("/").replace("{model}", model)


def image_repository(registry: str, model: str) -> str:
    """``REGISTRY/MODEL``: the model's serving images, in its own repository."""
    return f"{model_registry(registry, model)}/{model}"
