"""terraform/ agrees with the google provider's schema, and the check catches what `terraform validate` would."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("hcl2", reason="python-hcl2 is installed by nox -s terraform")

from . import hcl, provider_schema
from .schema_check import NOT_GOOGLE, Problem, check_module, check_references, provider_of


@pytest.fixture(scope="module")
def schema() -> provider_schema.ProviderSchema:
    return provider_schema.load()


@pytest.fixture
def copy(module: Path, tmp_path: Path) -> Path:
    """A scratch copy of the module to plant mistakes in."""
    target = tmp_path / "terraform"
    shutil.copytree(module, target, ignore=shutil.ignore_patterns(".terraform", ".build"))
    return target


def _plant(directory: Path, file: str, old: str, new: str, *, first: bool = False) -> None:
    """Replace ``old`` (which must be there once, or at least once with ``first``) in a file of the copy."""
    path = directory / file
    text = path.read_text()
    found = text.count(old)
    assert found == 1 or (first and found > 1), f"{old!r} is {found} times in {file}: the test's anchor moved"
    path.write_text(text.replace(old, new, 1))


def _only(problems: list[Problem]) -> str:
    assert len(problems) == 1, "\n".join(map(str, problems)) or "no problem found"
    return str(problems[0])


def test_every_block_matches_the_provider_schema(module: Path, schema: provider_schema.ProviderSchema) -> None:
    problems = check_module(module, schema)
    assert not problems, "\n".join(map(str, problems))


def test_every_reference_is_declared(module: Path) -> None:
    problems = check_references(module)
    assert not problems, "\n".join(map(str, problems))


def test_an_undeclared_reference_is_caught(copy: Path) -> None:
    _plant(copy, "pubsub.tf", "for_each = local.stage_subscriptions", "for_each = local.stage_subscription")
    message = _only(check_references(copy))
    assert "pubsub.tf:" in message and "reference to undeclared local.stage_subscription" in message


@pytest.mark.parametrize("provider", sorted(provider_schema.PACKAGES))
def test_the_module_uses_the_provider_version_it_is_checked_against(module: Path, provider: str) -> None:
    schema = provider_schema.load(provider=provider)
    versions = hcl.parse(module / "versions.tf")["terraform"][0]["required_providers"][0][provider]
    assert versions["source"] == f"hashicorp/{provider}"
    constraint = versions["version"]
    match = re.fullmatch(r"~>\s*(\d+)\.(\d+)", constraint)
    assert match, f"pin the {provider} provider as ~> MAJOR.MINOR, not {constraint!r}"
    major, minor = (int(x) for x in schema.provider_version.split(".")[:2])
    assert (major, minor) >= (int(match[1]), int(match[2])) and major == int(match[1]), (
        f"versions.tf allows {provider} {constraint} but the schema checked is {schema.provider_version} "
        f"({schema.package}): move them together"
    )


def test_only_allowlisted_blocks_of_other_providers(module: Path) -> None:
    blocks = [b for b in hcl.top_blocks(module) if b.kind in ("resource", "data")]
    assert {provider_of(b) for b in blocks if (b.kind, b.labels[0]) not in NOT_GOOGLE} <= set(provider_schema.PACKAGES)
    foreign = {
        (b.kind, b.labels[0])
        for b in blocks
        if provider_of(b) not in provider_schema.PACKAGES
        or provider_schema.load(provider=provider_of(b)).root(b.kind, b.labels[0]) is None
    }
    assert foreign <= set(NOT_GOOGLE)


def test_google_beta_is_used_only_where_google_lacks_the_type(
    module: Path, schema: provider_schema.ProviderSchema
) -> None:
    """The beta provider's resources may change without notice: each block on it must be one GA cannot make."""
    beta = [b for b in hcl.top_blocks(module) if b.kind in ("resource", "data") and provider_of(b) == "google-beta"]
    assert beta, "google_project_service_identity (the Pub/Sub agent) is made with google-beta"
    assert [b.where() for b in beta if schema.root(b.kind, b.labels[0]) is not None] == []


def test_a_beta_only_type_without_the_beta_provider_is_caught(
    copy: Path, schema: provider_schema.ProviderSchema
) -> None:
    """hashicorp/google 8.7 has no google_project_service_identity: Terraform would refuse the block."""
    _plant(copy, "service_accounts.tf", "  provider = google-beta\n", "")
    message = _only(check_module(copy, schema))
    assert "service_accounts.tf:" in message
    assert "unknown resource type 'google_project_service_identity' in hashicorp/google 8.7.0" in message


def test_a_typo_in_a_beta_block_is_caught_against_the_beta_schema(
    copy: Path, schema: provider_schema.ProviderSchema
) -> None:
    _plant(copy, "service_accounts.tf", '  service = "pubsub.googleapis.com"', '  servce = "pubsub.googleapis.com"')
    messages = [str(p) for p in check_module(copy, schema)]
    assert len(messages) == 2, messages
    assert "google_project_service_identity pubsub_agent: servce: unknown argument 'servce'" in messages[0]
    assert "missing required argument 'service'" in messages[1]


def test_a_removed_block_naming_a_declared_resource_is_caught(
    copy: Path, schema: provider_schema.ProviderSchema
) -> None:
    """Terraform refuses a `removed` block whose resource is still declared ("Removed resource block still exists")."""
    _plant(copy, "pubsub.tf", "from = google_pubsub_topic.foreign", "from = google_pubsub_topic.event")
    message = _only(check_module(copy, schema))
    assert "pubsub.tf:" in message and "removed: from: google_pubsub_topic.event is still declared" in message


def test_a_typo_in_a_removed_block_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "pubsub.tf", "    destroy = false", "    destory = false")
    message = _only(check_module(copy, schema))
    assert "removed: lifecycle.destory: unknown argument 'destory' (did you mean 'destroy'?)" in message


def test_a_typo_in_a_lifecycle_condition_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "scheduler.tf", "      error_message =", "      error_mesage  =")
    messages = [str(p) for p in check_module(copy, schema)]
    assert len(messages) == 2, messages
    assert "google_cloud_scheduler_job job: lifecycle.precondition.error_mesage: unknown argument" in messages[0]
    assert "lifecycle.precondition.error_message: missing required argument 'error_message'" in messages[1]


def test_a_removed_resource_is_not_an_undeclared_reference(module: Path) -> None:
    assert any(b.kind == "removed" for b in hcl.top_blocks(module))
    assert check_references(module) == []


def test_a_planted_typo_is_caught_with_file_resource_and_name(
    copy: Path, schema: provider_schema.ProviderSchema
) -> None:
    _plant(
        copy,
        "pubsub.tf",
        "ack_deadline_seconds = each.value.ack_deadline_seconds",
        "ack_deadline_second = each.value.ack_deadline_seconds",
    )
    message = _only(check_module(copy, schema))
    assert "pubsub.tf:" in message
    assert "resource google_pubsub_subscription stage" in message
    assert "unknown argument 'ack_deadline_second'" in message
    assert "did you mean 'ack_deadline_seconds'" in message


def test_a_typo_in_a_nested_block_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "pubsub.tf", "audience              =", "audiance              =")
    message = _only(check_module(copy, schema))
    assert "google_pubsub_subscription stage: push_config.oidc_token.audiance: unknown argument" in message


def test_a_missing_required_argument_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "registry.tf", '  format        = "DOCKER"\n', "")
    message = _only(check_module(copy, schema))
    assert "registry.tf:" in message and "google_artifact_registry_repository model" in message
    assert "missing required argument 'format'" in message


def test_a_missing_required_block_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "registry.tf", "  replication {\n    auto {}\n  }\n", "")
    message = _only(check_module(copy, schema))
    assert "google_secret_manager_secret gate_key" in message and "missing required block 'replication'" in message


def test_a_block_written_as_an_argument_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "pubsub.tf", "  retry_policy {\n", "  retry_policy = {\n")
    message = _only(check_module(copy, schema))
    assert "resource google_pubsub_subscription stage: retry_policy" in message
    assert "is a block: write `retry_policy { ... }`" in message


def test_an_argument_written_as_a_block_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(copy, "functions.tf", '    runtime     = "python311"\n', '    runtime {\n      name = "python311"\n    }\n')
    message = _only(check_module(copy, schema))
    assert "build_config.runtime" in message and "is an argument" in message


def test_dynamic_blocks_are_checked_against_their_block(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(
        copy,
        "iam.tf",
        "      title       = condition.value.title\n      description",
        "      titel       = condition.value.title\n      description",
        first=True,
    )
    messages = [str(p) for p in check_module(copy, schema)]
    assert len(messages) == 2, messages
    assert "google_project_iam_member grant: condition.titel: unknown argument 'titel'" in messages[0]
    assert "google_project_iam_member grant: condition.title: missing required argument 'title'" in messages[1]


def test_an_unknown_resource_type_is_caught(copy: Path, schema: provider_schema.ProviderSchema) -> None:
    _plant(
        copy,
        "registry.tf",
        'resource "google_artifact_registry_repository" "model"',
        'resource "google_artifact_registry_repo" "model"',
    )
    problems = check_module(copy, schema)
    assert any("unknown resource type 'google_artifact_registry_repo'" in str(p) for p in problems)
