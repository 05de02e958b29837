"""Whoever runs `terraform apply` is told every predefined role it needs: one per kind of block in terraform/.

Each type's roles hold the create, update and delete permissions of that type, and setIamPolicy where the
type is a binding (https://cloud.google.com/iam/docs/roles-permissions). A new resource type fails
test_every_type_has_its_roles until its roles are added here, and the README's table must list them all.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("hcl2", reason="python-hcl2 is installed by nox -s terraform")

from . import hcl
from .docs import deploy_section

ACT_AS = "roles/iam.serviceAccountUser"
#: Blocks that make no Google Cloud call, so need no role: (kind, type) -> why.
NOT_GOOGLE = {
    ("data", "archive_file"): "hashicorp/archive zips functions/ on the deployer's machine; it calls no API",
}
#: (kind, type) -> the predefined roles a deployer needs for it.
ROLES: dict[tuple[str, str], set[str]] = {
    ("data", "google_pubsub_topic"): {"roles/pubsub.admin"},
    ("resource", "google_pubsub_topic"): {"roles/pubsub.admin"},
    # A push subscription's OIDC identity needs iam.serviceAccounts.actAs on it
    # (https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions).
    ("resource", "google_pubsub_subscription"): {"roles/pubsub.admin", ACT_AS},
    ("resource", "google_pubsub_topic_iam_member"): {"roles/pubsub.admin"},
    ("resource", "google_pubsub_subscription_iam_member"): {"roles/pubsub.admin"},
    # Deploying a function that runs as a service account needs actAs on it
    # (https://cloud.google.com/functions/docs/reference/iam/roles#additional-configuration).
    ("resource", "google_cloudfunctions2_function"): {"roles/cloudfunctions.developer", ACT_AS},
    # A gen2 function's invoker is bound on its Cloud Run service (run.services.setIamPolicy).
    ("resource", "google_cloud_run_v2_service_iam_member"): {"roles/run.admin"},
    # The web view's service (ui.tf) runs as its own account: run.services.create and actAs on that account
    # (https://cloud.google.com/run/docs/reference/iam/roles#additional-configuration).
    ("resource", "google_cloud_run_v2_service"): {"roles/run.admin", ACT_AS},
    ("resource", "google_storage_bucket"): {"roles/storage.admin"},
    ("resource", "google_storage_bucket_object"): {"roles/storage.admin"},
    ("resource", "google_storage_bucket_iam_member"): {"roles/storage.admin"},
    # A bucket's notification config needs storage.buckets.update on the bucket and pubsub rights on the topic
    # (https://cloud.google.com/storage/docs/reporting-changes#prereqs); reading the Cloud Storage service agent
    # (projects.serviceAccount.get) is a storage project call.
    ("resource", "google_storage_notification"): {"roles/storage.admin", "roles/pubsub.admin"},
    ("data", "google_storage_project_service_account"): {"roles/storage.admin"},
    ("resource", "google_artifact_registry_repository"): {"roles/artifactregistry.admin"},
    ("resource", "google_artifact_registry_repository_iam_member"): {"roles/artifactregistry.admin"},
    ("resource", "google_secret_manager_secret"): {"roles/secretmanager.admin"},
    ("resource", "google_secret_manager_secret_iam_member"): {"roles/secretmanager.admin"},
    ("resource", "google_cloud_scheduler_job"): {"roles/cloudscheduler.admin"},
    ("resource", "google_service_account"): {"roles/iam.serviceAccountAdmin"},
    ("resource", "google_service_account_iam_member"): {"roles/iam.serviceAccountAdmin"},
    # Project bindings, conditional ones included (resourcemanager.projects.setIamPolicy).
    ("resource", "google_project_iam_member"): {"roles/resourcemanager.projectIamAdmin"},
    # iam.roles.create/update/delete (https://cloud.google.com/iam/docs/creating-custom-roles#required-permissions).
    ("resource", "google_project_iam_custom_role"): {"roles/iam.roleAdmin"},
    # datastore.indexes.create/delete (https://cloud.google.com/firestore/docs/security/iam#roles).
    ("resource", "google_firestore_index"): {"roles/datastore.indexAdmin"},
    # services.generateServiceIdentity (Service Usage; also what step 1 needs to enable the APIs).
    ("resource", "google_project_service_identity"): {"roles/serviceusage.serviceUsageAdmin"},
}
#: README step 1, before Terraform: enable the APIs, create the Firestore database and Google's topics.
STEP_1 = {"roles/serviceusage.serviceUsageAdmin", "roles/datastore.owner", "roles/pubsub.admin"}


def _types(module: Path) -> set[tuple[str, str]]:
    return {
        (b.kind, b.labels[0])
        for b in hcl.top_blocks(module)
        if b.kind in ("resource", "data") and (b.kind, b.labels[0]) not in NOT_GOOGLE
    }


def readme_roles() -> set[str]:
    """The roles of the README's deployer table (rows starting with a `roles/...` cell)."""
    return set(re.findall(r"^\|\s*`(roles/[\w.]+)`\s*\|", deploy_section(), re.MULTILINE))


def test_every_type_has_its_roles(module: Path) -> None:
    assert sorted(_types(module) - set(ROLES)) == []


def test_the_readme_lists_every_role_the_deployer_needs(module: Path) -> None:
    needed = set().union(*(ROLES[t] for t in _types(module) if t in ROLES)) | STEP_1
    listed = readme_roles()
    assert sorted(needed - listed) == [], "missing from the README's deployer table"
    assert sorted(listed - needed) == [], "listed in the README's deployer table but needed by nothing"
