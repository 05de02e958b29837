"""Terraform's own `validate` and `plan` of terraform/ run offline against the stand-in providers
(tests/terraform/provider), and fail on what only Terraform's evaluator sees.

Each test plants one mistake in a copy of the module and runs the same check as `nox -s terraform`
(``python -m tests.terraform.provider.plan``): the command that fails and Terraform's own message are asserted.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("msgpack", reason="msgpack and grpcio-tools are installed by nox -s terraform")
pytest.importorskip("grpc_tools", reason="msgpack and grpcio-tools are installed by nox -s terraform")

from . import hcl
from .provider import plan, schema

#: The google-beta provider may change without notice: only these types may be made with it.
BETA_ONLY = {"google_project_service_identity"}


@pytest.fixture
def copy(module: Path, tmp_path: Path) -> Path:
    """A scratch copy of the module to plant mistakes in."""
    target = tmp_path / "terraform"
    shutil.copytree(module, target, ignore=shutil.ignore_patterns(".terraform", ".build", "*.tfstate*"))
    return target


def _plant(directory: Path, file: str, old: str, new: str) -> None:
    """Replace ``old`` (which must be there exactly once) in a file of the copy."""
    path = directory / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is {text.count(old)} times in {file}: the test's anchor moved"
    path.write_text(text.replace(old, new))


def _fails(directory: Path, command: str) -> str:
    """Terraform's output of ``command``, which must be the step that failed."""
    result = plan.run(directory, plan.EXAMPLE_VARS)
    failed = result.failed
    assert failed is not None, f"the planted mistake was not caught:\n{result.output[-3000:]}"
    assert failed.command == command, f"terraform {failed.command} failed, not {command}:\n{failed.output}"
    return failed.output


def test_the_module_plans_clean_offline(module: Path) -> None:
    result = plan.run(module, plan.EXAMPLE_VARS)
    assert result.ok, result.output[-5000:]
    summary = re.search(r"Plan: (\d+) to add, 0 to change, 0 to destroy", result.steps[-1].output)
    assert summary and int(summary[1]) > 0, result.steps[-1].output[-2000:]
    # Computed attributes are planned unknown, as a real provider plans them before apply.
    assert "(known after apply)" in result.steps[-1].output


def test_an_invalid_index_into_a_for_each_map_fails_the_plan(copy: Path) -> None:
    """The break of outputs.tf fixed in 717512d: stages with several triggers are keyed `stage:type`."""
    _plant(
        copy,
        "outputs.tf",
        "[for k, sub in google_pubsub_subscription.stage : sub.name if local.stage_subscriptions[k].stage == s]",
        "[google_pubsub_subscription.stage[s].name]",
    )
    output = _fails(copy, "plan")
    assert "Error: Invalid index" in output and "outputs.tf" in output, output


def test_an_unsupported_argument_fails_validate(copy: Path) -> None:
    _plant(
        copy,
        "pubsub.tf",
        "ack_deadline_seconds = each.value.ack_deadline_seconds",
        "ack_deadline_second = each.value.ack_deadline_seconds",
    )
    output = _fails(copy, "validate")
    assert "Error: Unsupported argument" in output and 'An argument named "ack_deadline_second"' in output, output


def test_a_reference_to_an_unsupported_attribute_fails_validate(copy: Path) -> None:
    (copy / "probe.tf").write_text('output "probe" {\n  value = google_storage_bucket.bucket["data"].registry_url\n}\n')
    output = _fails(copy, "validate")
    assert "Error: Unsupported attribute" in output and "registry_url" in output, output


def test_a_type_mismatch_fails_validate(copy: Path) -> None:
    _plant(copy, "registry.tf", '  format        = "DOCKER"\n', '  format        = ["DOCKER"]\n')
    output = _fails(copy, "validate")
    assert "Error: Incorrect attribute value type" in output and "format" in output, output


def test_a_cycle_fails_validate(copy: Path) -> None:
    """The subscriptions wait for the grants, so a grant target may not reference a subscription (iam.tf)."""
    _plant(
        copy,
        "iam.tf",
        '"subscription:${k}" => sub.name',
        '"subscription:${k}" => google_pubsub_subscription.stage[k].name',
    )
    output = _fails(copy, "validate")
    assert "Error: Cycle:" in output and "google_pubsub_subscription.stage" in output, output


def test_a_beta_only_type_without_the_beta_provider_fails_validate(copy: Path) -> None:
    """hashicorp/google 8.7 has no google_project_service_identity (the Pub/Sub service agent)."""
    _plant(copy, "service_accounts.tf", "  provider = google-beta\n", "")
    output = _fails(copy, "validate")
    assert "google_project_service_identity" in output and "does not support resource type" in output, output


def test_a_value_on_a_read_only_attribute_fails_validate(copy: Path) -> None:
    """Terraform leaves this check to the provider; the stand-in refuses it as terraform-plugin-sdk does."""
    _plant(copy, "registry.tf", '  format        = "DOCKER"\n', '  format        = "DOCKER"\n  create_time   = "now"\n')
    output = _fails(copy, "validate")
    assert "create_time: this field cannot be set" in output, output


def test_a_provider_without_a_stand_in_fails_init(copy: Path) -> None:
    """Nothing is fetched from the registry: a new provider needs its stand-in (schema.PACKAGES) first."""
    (copy / "probe.tf").write_text('resource "random_id" "probe" {\n  byte_length = 4\n}\n')
    output = _fails(copy, "init")
    assert "hashicorp/random" in output, output


@pytest.mark.parametrize("provider", sorted(schema.PACKAGES))
def test_the_module_pins_the_provider_version_it_is_planned_against(module: Path, provider: str) -> None:
    version = schema.load(provider)["version"]
    pins = hcl.parse(module / "versions.tf")["terraform"][0]["required_providers"][0]
    assert provider in pins, f"versions.tf does not require {provider}; drop its stand-in from schema.PACKAGES"
    assert pins[provider]["source"] == f"hashicorp/{provider}"
    match = re.fullmatch(r"~>\s*(\d+)\.(\d+)", pins[provider]["version"])
    assert match, f"pin the {provider} provider as ~> MAJOR.MINOR, not {pins[provider]['version']!r}"
    major, minor = (int(x) for x in version.split(".")[:2])
    assert major == int(match[1]) and minor >= int(match[2]), (
        f"versions.tf allows {provider} {pins[provider]['version']} but the stand-in serves {version}'s schema "
        f"({schema.PACKAGES[provider][0]}): move them together"
    )


def test_google_beta_is_used_only_where_google_lacks_the_type(module: Path) -> None:
    """The beta provider's resources may change without notice: each block on it must be one GA cannot make."""
    google = schema.load("google")
    beta = [
        b
        for b in hcl.top_blocks(module)
        if b.kind in ("resource", "data") and str(b.body.get("provider", "")).strip("${}") == "google-beta"
    ]
    assert beta, "google_project_service_identity (the Pub/Sub agent) is made with google-beta"
    assert [b.where() for b in beta if b.labels[0] in google[b.kind]] == []
    assert {b.labels[0] for b in beta} <= BETA_ONLY
