"""Per-model identities: each model's builds and training jobs run as that model's own accounts, its images go to its
own repository, and the local registry lets a model's build account write that repository only."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from cd4ml_models import folder as models
from local_emulator.cloudbuild import push_credentials
from local_emulator.iam import policy as iam_policy
from local_emulator.iam.access_tokens import Minter, new_key

from cd4ml import identities
from cd4ml.events import PubSubMessage
from cd4ml.gcs import GcsPath
from cd4ml.stages import delivery
from tests.e2e.conftest import EXAMPLE

REGISTRY = "us-central1-docker.pkg.dev/p/cd4ml-{model}"
ACCOUNTS = "{account}@p.iam.gserviceaccount.com"


def test_account_ids_fit_iams_limits_and_differ_per_model() -> None:
    assert identities.account_id("build", "digits") == "cd4ml-build-digits"
    assert identities.account_id("train", "digits") == "cd4ml-train-digits"
    long_a, long_b = "a-very-long-model-name-one", "a-very-long-model-name-two"
    ids = {identities.account_id(kind, m) for kind in identities.KINDS for m in (long_a, long_b)}
    assert len(ids) == 4
    assert all(6 <= len(i) <= 30 and i[0].isalpha() and not i.endswith("-") for i in ids)
    with pytest.raises(ValueError, match="unknown identity kind"):
        identities.account_id("deploy", "digits")


def test_a_registry_with_model_names_a_repository_per_model() -> None:
    assert identities.image_repository(REGISTRY, "digits") == "us-central1-docker.pkg.dev/p/cd4ml-digits/digits"
    assert identities.image_repository("127.0.0.1:5000/cd4ml/", "digits") == "127.0.0.1:5000/cd4ml/digits"


def test_a_build_runs_as_its_models_own_account_and_pushes_to_its_own_repository() -> None:
    settings = SimpleNamespace(registry=REGISTRY, project="p", build_service_account=ACCOUNTS)
    build = delivery.build_request(
        cast(Any, SimpleNamespace(settings=settings)),
        models.read(EXAMPLE),
        "digits-20260101t000000z",
        GcsPath("artifacts", "builds/digits-20260101t000000z/context.tar.gz"),
        "ab" * 32,
    )
    assert build.service_account == "projects/p/serviceAccounts/cd4ml-build-digits@p.iam.gserviceaccount.com"
    assert list(build.images) == ["us-central1-docker.pkg.dev/p/cd4ml-digits/digits:digits-20260101t000000z"]


def _notice(tag: str) -> delivery.PushNotice:
    digest = tag.rsplit(":", 1)[0] + "@sha256:" + "a" * 64
    data = json.dumps({"action": "INSERT", "digest": digest, "tag": tag}).encode()
    return delivery.PushNotice.of(cast(PubSubMessage, SimpleNamespace(data=data, attributes={})))


def test_a_push_counts_only_in_its_models_own_repository() -> None:
    own = _notice("us-central1-docker.pkg.dev/p/cd4ml-digits/digits:digits-20260101t000000z")
    assert own.run_id(REGISTRY) == "digits-20260101t000000z"
    # B's run id pushed into A's repository (or under another image name) belongs to no run.
    assert _notice("us-central1-docker.pkg.dev/p/cd4ml-other/digits:digits-20260101t000000z").run_id(REGISTRY) is None
    assert _notice("us-central1-docker.pkg.dev/p/cd4ml-digits/other:digits-20260101t000000z").run_id(REGISTRY) is None


@pytest.fixture(scope="module")
def policy() -> iam_policy.Policy:
    return iam_policy.load("p", "p-data", "p-artifacts")


def test_locally_a_models_build_account_writes_its_own_repository_only(policy: iam_policy.Policy) -> None:
    build_a = f"build:{identities.account_id('build', 'alpha')}"
    assert policy.allows_image(build_a, "push", "cd4ml-alpha/alpha")
    assert policy.allows_image(build_a, "pull", "cd4ml-alpha/alpha")
    assert not policy.allows_image(build_a, "push", "cd4ml-beta/beta")
    assert not policy.allows_image(build_a, "pull", "cd4ml-beta/beta")
    assert not policy.allows_image(build_a, "delete", "cd4ml-alpha/alpha")  # writer holds no delete
    assert not policy.allows_image(build_a, "push", "cd4ml-beta/alpha")  # a repository is the model's own path
    assert policy.allows_image("function:promote", "push", "cd4ml-beta/beta")
    assert not policy.allows_image("function:evaluate", "pull", "cd4ml-beta/beta")
    assert not policy.allows_image("build", "push", "cd4ml-alpha/alpha")  # the shared storage port has no image rights


def test_locally_a_models_trainer_image_is_in_its_own_repository(policy: iam_policy.Policy) -> None:
    build_a = f"build:{identities.account_id('build', 'alpha')}"
    # Artifact Registry's IAM stops at the repository: any image in cd4ml-alpha is alpha's (its trainer image too)
    assert policy.allows_image(build_a, "push", "cd4ml-alpha/alpha-trainer")
    assert not policy.allows_image(build_a, "push", "cd4ml-beta/alpha-trainer")
    assert not policy.allows_image(build_a, "push", "cd4ml-alpha")  # a repository, no image
    # submit_training pins a trainer tag to its digest: it reads, and writes nothing
    assert policy.allows_image("function:submit_training", "pull", "cd4ml-beta/beta-trainer")
    assert not policy.allows_image("function:submit_training", "push", "cd4ml-beta/beta-trainer")


def test_the_cloud_build_stand_in_pushes_as_the_builds_own_account(tmp_path: Path) -> None:
    key = new_key(tmp_path / "key")
    credentials = push_credentials("p", key)
    creds = credentials("projects/p/serviceAccounts/cd4ml-build-alpha@p.iam.gserviceaccount.com")
    assert creds is not None and creds.startswith("oauth2accesstoken:")
    assert Minter.from_file(key).identity(creds.split(":", 1)[1]) == "build:cd4ml-build-alpha"
    assert credentials("") is None  # Cloud Build's legacy default account: no local grant, the push is refused
    assert credentials("projects/p/serviceAccounts/cd4ml-build-alpha@elsewhere.iam.gserviceaccount.com") is None


def test_locally_a_models_build_account_reads_only_its_own_build_contexts(policy: iam_policy.Policy) -> None:
    """The Cloud Build stand-in fetches a source with the build account's token: A's account reads builds/A-…/ only."""
    get = "storage.objects.get"
    build_a = f"build:{identities.account_id('build', 'alpha')}"
    assert policy.allows_object(build_a, get, "p-artifacts", name="builds/alpha-20260101t000000z/context.tar.gz")
    assert not policy.allows_object(build_a, get, "p-artifacts", name="builds/beta-20260101t000000z/context.tar.gz")
    assert not policy.allows_object(build_a, get, "p-artifacts", name="runs/alpha-20260101t000000z/model/model.joblib")
    build_ab = f"build:{identities.account_id('build', 'alpha-b')}"  # a dashed name is matched as a whole
    assert policy.allows_object(build_ab, get, "p-artifacts", name="builds/alpha-b-20260101t000000z/context.tar.gz")
    assert not policy.allows_object(build_ab, get, "p-artifacts", name="builds/alpha-20260101t000000z/context.tar.gz")
    assert policy.principal(build_a) == "cd4ml-build-alpha@p.iam.gserviceaccount.com"


def test_every_stage_that_announces_a_push_knows_the_registry_it_checks_the_repository_against() -> None:
    """image.pushed is emitted only for the model's own repository (identities.image_repository), so a stage that
    emits it (on_push, and on_build releasing a push noted before the build's SUCCESS) needs CD4ML_REGISTRY."""
    from cd4ml import catalog

    emitters = [s for s in catalog.load().stages if "cd4ml.image.pushed.v1" in s.emits]
    assert {s.name for s in emitters} >= {"on_push", "on_build"}
    assert [s.name for s in emitters if "CD4ML_REGISTRY" not in s.env] == []
