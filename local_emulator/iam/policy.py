"""Who may do what locally: terraform/iam_bindings.yaml expanded over the catalog exactly as catalog.tf does.

The local stack's authorizing proxies (``local_emulator.iam_proxy``) ask this policy before forwarding a call to
the Pub/Sub or GCS emulator, so a grant Terraform does not make is refused locally too. The expansion mirrors
``local.iam_plan`` in terraform/catalog.tf (stages ``["*"]`` = every stage, ``emits_topics`` = one topic per
emitted type, ``prefixes`` = the IAM condition on object names and list prefixes); tests/standins/test_local_iam.py
compares the two views rule by rule.

Identities: ``function:STAGE`` (each function's service account), ``training`` (Vertex AI jobs), ``build``
(Cloud Build builds) and ``admin`` (the CLI, ``cd4ml local up``, tests: unrestricted, as the project owner is).
Terraform makes one training and one build account per model (``model_training``, ``model_build``): at the local
registry and for the Cloud Build stand-in's source fetch (its bearer token) each model's build account is its own
identity, ``build:ACCOUNT_ID`` (``cd4ml.identities``): its own repository and ``builds/MODEL-`` only. Trainers still
act through one ``training`` port, which holds the union of the per-model prefixes (cut at ``{model}``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cd4ml import catalog as cd4ml_catalog
from cd4ml.catalog import Catalog
from cd4ml.identities import account_id, image_repository

BINDINGS_FILE = Path(__file__).resolve().parents[2] / "terraform" / "iam_bindings.yaml"
ADMIN = "admin"

#: The permissions of the predefined roles the bindings use, as far as the emulators expose them.
#: Sources: https://cloud.google.com/pubsub/docs/access-control#roles and
#: https://cloud.google.com/storage/docs/access-control/iam-roles (objectViewer holds no storage.buckets.*).
ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "roles/pubsub.publisher": frozenset({"pubsub.topics.publish"}),
    "roles/pubsub.editor": frozenset(
        {
            "pubsub.topics.publish",
            "pubsub.topics.get",
            "pubsub.topics.attachSubscription",
            "pubsub.subscriptions.consume",
            "pubsub.subscriptions.get",
        }
    ),
    "roles/pubsub.admin": frozenset(
        {
            "pubsub.topics.publish",
            "pubsub.topics.get",
            "pubsub.topics.attachSubscription",
            "pubsub.subscriptions.consume",
            "pubsub.subscriptions.get",
        }
    ),
    "roles/storage.objectViewer": frozenset({"storage.objects.get", "storage.objects.list"}),
    "roles/storage.objectCreator": frozenset({"storage.objects.create"}),
    "roles/storage.objectUser": frozenset(
        {
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.update",
            "storage.objects.restore",
        }
    ),
    "roles/storage.objectAdmin": frozenset(
        {
            "storage.objects.get",
            "storage.objects.list",
            "storage.objects.create",
            "storage.objects.delete",
            "storage.objects.update",
            "storage.objects.restore",
            "storage.objects.getIamPolicy",
            "storage.objects.setIamPolicy",
        }
    ),
}

#: Docker Registry actions each Artifact Registry role allows on a repository's images (pull =
#: artifactregistry.repositories.downloadArtifacts, push = uploadArtifacts and tag writes, delete = deleteArtifacts;
#: https://cloud.google.com/artifact-registry/docs/access-control#roles).
IMAGE_ACTIONS: Mapping[str, frozenset[str]] = {
    "roles/artifactregistry.reader": frozenset({"pull"}),
    "roles/artifactregistry.writer": frozenset({"pull", "push"}),
    "roles/artifactregistry.repoAdmin": frozenset({"pull", "push", "delete"}),
}
#: The serving images in the local registry (``CD4ML_REGISTRY`` = ``HOST:PORT/cd4ml-{model}``, a repository per model
#: as on Artifact Registry): ``cd4ml-MODEL/MODEL``.
IMAGES_PATH = "cd4ml-{model}"
EVERY_MODEL = "*"
#: The identity of a model's build account at the registry: ``build:`` and its account id.
MODEL_BUILD = "build:{model}"


@dataclass(frozen=True)
class Grant:
    """One expanded binding on a topic or a bucket (other kinds are not enforced locally)."""

    rule: str
    identity: str
    role: str
    kind: str  # "topic" | "bucket" | "repository"
    target: str  # topic id | bucket name | the model whose images (EVERY_MODEL: every model's)
    prefixes: tuple[str, ...] = ()

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    def condition_holds(self, object_name: str | None, list_prefix: str | None) -> bool:
        """catalog.tf's condition: resource.name.startsWith(".../objects/P") || objectListPrefix.startsWith(P)."""
        if not self.prefixes:
            return True
        for prefix in self.prefixes:
            if object_name is not None and object_name.startswith(prefix):
                return True
            if (list_prefix if list_prefix is not None else "").startswith(prefix):
                return True
        return False


@dataclass(frozen=True)
class Policy:
    """Every grant on topics and buckets, by identity, and the project's service account emails."""

    project: str
    grants: tuple[Grant, ...]

    def identities(self) -> list[str]:
        """Every identity that holds a grant (a per-model one stands for each model's), plus the unrestricted admin."""
        return sorted({g.identity for g in self.grants if g.identity != MODEL_BUILD} | {ADMIN})

    def principal(self, identity: str) -> str:
        """The service account email of an identity, as terraform/service_accounts.tf names it."""
        if identity.startswith("function:"):
            account = "cd4ml-" + identity.removeprefix("function:").replace("_", "-")
        elif identity in ("training", "build"):
            account = f"cd4ml-{identity}"
        elif identity.startswith("build:"):
            account = identity.removeprefix("build:")  # a model's own build account (MODEL_BUILD)
        else:
            return f"{identity}@{self.project}.iam.gserviceaccount.com"
        return f"{account}@{self.project}.iam.gserviceaccount.com"

    def topics(self, identity: str, permission: str = "pubsub.topics.publish") -> set[str]:
        return {
            g.target
            for g in self.grants
            if g.identity == identity and g.kind == "topic" and permission in g.permissions
        }

    def allows_topic(self, identity: str, permission: str, topic: str) -> bool:
        return identity == ADMIN or topic in self.topics(identity, permission)

    def allows_image(self, identity: str, action: str, repository: str) -> bool:
        """Docker Registry ``action`` (pull, push, delete) on an image of the local registry's repository
        ``cd4ml-MODEL``: any image in it (``MODEL``, the serving images; ``MODEL-trainer``, a trainer image), as
        Artifact Registry's IAM stops at the repository."""
        if identity == ADMIN:
            return True
        head, _, image = repository.partition("/")
        prefix, _, suffix = IMAGES_PATH.partition("{model}")
        model = head[len(prefix) : len(head) - len(suffix)] if head.startswith(prefix) and head.endswith(suffix) else ""
        if not model or not image or image_repository(IMAGES_PATH, model).partition("/")[0] != head:
            return False
        own_build = f"build:{account_id('build', model)}"
        return any(
            (g.identity == identity or (g.identity == MODEL_BUILD and identity == own_build))
            and g.kind == "repository"
            and g.target in (EVERY_MODEL, model, "{model}")
            and action in IMAGE_ACTIONS.get(g.role, frozenset())
            for g in self.grants
        )

    def allows_object(
        self, identity: str, permission: str, bucket: str, *, name: str | None = None, list_prefix: str | None = None
    ) -> bool:
        """``permission`` on object ``name`` (or, for storage.objects.list, a listing of ``list_prefix``)."""
        if identity == ADMIN:
            return True
        if identity.startswith("build:"):
            return self._allows_own_model(identity.removeprefix("build:"), permission, bucket, name, list_prefix)
        return any(
            g.identity == identity
            and g.kind == "bucket"
            and g.target == bucket
            and permission in g.permissions
            and g.condition_holds(name, list_prefix)
            for g in self.grants
        )

    def _allows_own_model(
        self, account: str, permission: str, bucket: str, name: str | None, list_prefix: str | None
    ) -> bool:
        """A model's build account: a ``{model}`` prefix holds for the models whose build account it is (the model is
        read off the object name, e.g. builds/MODEL-…/; a name with dashes yields each candidate)."""
        for g in self.grants:
            if g.identity != MODEL_BUILD or g.kind != "bucket" or g.target != bucket or permission not in g.permissions:
                continue
            for template in g.prefixes:
                lead = template.split("{model}")[0]
                rest = (name if name is not None else list_prefix or "").removeprefix(lead)
                parts = rest.split("/")[0].split("-")
                for model in ("-".join(parts[:i]) for i in range(1, len(parts) + 1)):
                    concrete = Grant(
                        g.rule, g.identity, g.role, g.kind, g.target, (template.replace("{model}", model),)
                    )
                    if account_id("build", model) == account and concrete.condition_holds(name, list_prefix):
                        return True
        return False


def expand(rules: Mapping[str, Mapping[str, Any]], cat: Catalog, buckets: Mapping[str, str], project: str) -> Policy:
    """The grants of iam_bindings.yaml's ``rules``, expanded like catalog.tf's ``iam_plan``."""
    stage_names = [s.name for s in cat.stages]
    grants: list[Grant] = []
    for name, rule in rules.items():
        listed = rule.get("stages") or [""]
        for stage in stage_names if "*" in listed else listed:
            member, scope = str(rule["member"]), str(rule["scope"])
            identity = _identity(member, stage)
            if identity is None:
                continue  # the invoker and Pub/Sub's service agent act inside the emulator, not through a proxy
            prefixes = tuple(str(p) for p in rule.get("prefixes") or ())
            for kind, target in _targets(scope, stage, cat, buckets, own_model=member.startswith("model_")):
                if member == "model_build":  # each model's own build account: its own prefixes and repository
                    grants.append(Grant(name, MODEL_BUILD, str(rule["role"]), kind, target, prefixes))
                    if kind == "repository":
                        continue
                # The shared local ports of per-model identities: every model's prefixes (cut at {model}).
                grants.append(
                    Grant(
                        name, identity, str(rule["role"]), kind, target, tuple(p.split("{model}")[0] for p in prefixes)
                    )
                )
    return Policy(project=project, grants=tuple(grants))


def _identity(member: str, stage: str) -> str | None:
    if member == "function":
        return f"function:{stage}"
    if member in ("model_training", "model_build"):
        return member.removeprefix("model_")  # the stand-ins' shared ports
    if member == "storage_agent":
        return member  # the storage proxy's notification bridge publishes as it
    return None


def _targets(
    scope: str, stage: str, cat: Catalog, buckets: Mapping[str, str], *, own_model: bool = False
) -> Iterable[tuple[str, str]]:
    if scope == "emits_topics":
        return [("topic", cd4ml_catalog.topic_id(t)) for t in cat.stage(stage).emits]
    if scope == "dead_letter_topic":
        return [("topic", cd4ml_catalog.dead_letter_topic(stage))]
    if scope in buckets:
        return [("bucket", buckets[scope])]
    if scope == "data_arrivals_topic":
        return [("topic", name) for name, _, _ in cat.notification_topics]
    if scope == "model_repository":  # enforced by the local registry's token service
        return [("repository", "{model}" if own_model else EVERY_MODEL)]
    return []  # project, secrets, services: not behind a local proxy


@functools.cache
def load(project: str, data_bucket: str, artifact_bucket: str, bindings: Path = BINDINGS_FILE) -> Policy:
    """The policy of a deployment with these buckets, from iam_bindings.yaml and the catalog."""
    raw = yaml.safe_load(bindings.read_text())
    return expand(
        raw["bindings"], cd4ml_catalog.load(), {"bucket:data": data_bucket, "bucket:artifact": artifact_bucket}, project
    )
