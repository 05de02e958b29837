"""Least privilege, checked: every binding is a justified rule of terraform/iam_bindings.yaml, and nothing more.

The bindings are read as Terraform computes them (catalog.tf's iam_plan, evaluated by `terraform console`),
and iam.tf is read with python-hcl2 to show that its *_iam_member resources apply that plan and nothing else.
"""

from __future__ import annotations

import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hcl2", reason="python-hcl2 is installed by nox -s terraform")

from cd4ml import catalog as cd4ml_catalog
from cd4ml.catalog import Catalog

from . import hcl
from .evaluate import evaluate

PRIMITIVE = re.compile(r"roles/(owner|editor|viewer)\b")
MEMBERS = {
    "function",
    "invoker",
    "pubsub_agent",
    "storage_agent",
    "model_training",
    "model_build",
    "approvers",
    "ui",
    "ui_viewers",
}
PER_STAGE_MEMBERS = {"function", "invoker"}
PER_STAGE_SCOPES = {"emits_topics", "dead_letter_topic", "subscription", "run_service", "service_account:invoker"}
RULE_KEYS = {"role", "member", "stages", "scope", "prefixes", "condition", "why"}
#: Roles at project level: each is there because its service has no narrower resource (see iam_bindings.yaml).
PROJECT_ROLES = {
    "custom/cd4mlLedgerWriter",
    "roles/datastore.viewer",
    "custom/cd4mlJobSubmitter",
    "custom/cd4mlJobReader",
    "custom/cd4mlBuildSubmitter",
    "roles/logging.logWriter",
}
#: Which roles mean a stage uses which service, in the words of the catalog's `uses`.
SERVICE_ROLES: dict[str, str | tuple[str, ...]] = {
    "firestore": ("roles/datastore.", "custom/cd4mlLedger"),
    "vertex": ("roles/aiplatform.", "custom/cd4mlJob"),
    "cloudbuild": ("roles/cloudbuild.", "custom/cd4mlBuild"),
    "secretmanager": "roles/secretmanager.",
    "storage": "roles/storage.",
    "registry": "roles/artifactregistry.",
}
IAM_RESOURCE = re.compile(r"^google_\w+_iam_(member|binding|policy|audit_config)$")


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return cd4ml_catalog.load()


@pytest.fixture(scope="module")
def grants(tf_locals: dict[str, Any]) -> list[dict[str, Any]]:
    return list(tf_locals["iam_plan"].values())


def _by_member(grants: list[dict[str, Any]], role_prefix: str | tuple[str, ...]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for g in grants:
        if g["role"].startswith(role_prefix):
            found[g["member"]].add(g["target"])
    return dict(found)


def rule_problems(rules: dict[str, Any], kinds: dict[str, str], cat: Catalog) -> list[str]:
    """What is wrong with the rules of iam_bindings.yaml: no reason, unknown members, scopes or stages, ..."""
    problems = []
    stage_names = {s.name for s in cat.stages}
    for name, rule in rules.items():
        unknown = set(rule) - RULE_KEYS
        if unknown:
            problems.append(f"{name}: unknown keys {sorted(unknown)}")
        if len(str(rule.get("why") or "").split()) < 6:
            problems.append(f"{name}: `why` must say in a sentence why the binding is needed")
        if rule.get("member") not in MEMBERS:
            problems.append(f"{name}: member {rule.get('member')!r} is not one of {sorted(MEMBERS)}")
        if rule.get("scope") not in kinds:
            problems.append(f"{name}: scope {rule.get('scope')!r} is not one of {sorted(kinds)}")
        stages = rule.get("stages")
        per_stage = rule.get("member") in PER_STAGE_MEMBERS or rule.get("scope") in PER_STAGE_SCOPES
        if per_stage != (stages is not None):
            problems.append(f"{name}: `stages` is needed exactly when the member or scope is per stage")
        if stages is not None and stages != ["*"] and not set(stages) <= stage_names:
            problems.append(f"{name}: unknown stages {sorted(set(stages) - stage_names)}")
        if "prefixes" in rule and not str(rule.get("scope")).startswith("bucket:"):
            problems.append(f"{name}: `prefixes` narrow bucket bindings only")
        if rule.get("condition", "firestore_database") != "firestore_database":
            problems.append(f"{name}: unknown condition {rule['condition']!r}")
    return problems


def test_every_rule_has_a_reason_and_a_known_shape(tf_locals: dict[str, Any], cat: Catalog) -> None:
    assert rule_problems(tf_locals["iam_rules"], tf_locals["iam_kinds"], cat) == []


def test_no_primitive_role_anywhere(module: Path, grants: list[dict[str, Any]]) -> None:
    assert not [g["key"] for g in grants if PRIMITIVE.search(g["role"])]
    for path in [*module.glob("*.tf"), module / "iam_bindings.yaml"]:
        assert not PRIMITIVE.search(path.read_text()), f"{path.name} names a primitive role"


def test_no_project_wide_pubsub_role(grants: list[dict[str, Any]]) -> None:
    assert not [g["key"] for g in grants if g["kind"] == "project" and g["role"].startswith("roles/pubsub.")]


def test_project_level_roles_are_the_justified_few(grants: list[dict[str, Any]]) -> None:
    assert {g["role"] for g in grants if g["kind"] == "project"} == PROJECT_ROLES
    for g in grants:
        if g["role"] in ("custom/cd4mlLedgerWriter", "roles/datastore.viewer"):
            assert g["condition"] and "/databases/" in g["condition"]["expression"], g["key"]


def binding_resource_problems(module: Path) -> list[str]:
    """IAM made other than by applying the plan: authoritative resources, literal roles, a kind applied twice."""
    problems: list[str] = []
    kinds: list[str] = []
    for block in hcl.top_blocks(module):
        type_name = block.labels[0] if block.labels else ""
        if block.kind == "data" and "iam_policy" in type_name:
            problems.append(f"{block.where()}: an authoritative policy document; bind with *_iam_member from the plan")
        if block.kind != "resource" or not IAM_RESOURCE.match(type_name):
            continue
        if not type_name.endswith("_iam_member"):
            problems.append(f"{block.where()}: authoritative IAM resources replace grants made by others")
        match = re.fullmatch(
            r'\$\{\{for k, g in local\.iam_grants : k => g if g\.kind == "(\w+)"\}\}', str(block.body.get("for_each"))
        )
        if not match:
            problems.append(f"{block.where()}: for_each must be the iam_grants of one kind, not a binding of its own")
            continue
        if block.body.get("role") != "${each.value.role}" or block.body.get("member") != "${each.value.member}":
            problems.append(f"{block.where()}: role and member must be the plan's (each.value.role, each.value.member)")
        if match[1] in kinds:
            problems.append(f"{block.where()}: a second resource for grants of kind {match[1]!r}")
        kinds.append(match[1])
    for path in sorted(module.glob("*.tf")):
        if "roles/" in path.read_text():
            problems.append(f"{path}: names a role; roles live in iam_bindings.yaml")
    return problems


def test_no_binding_is_made_outside_the_list(module: Path) -> None:
    assert binding_resource_problems(module) == []


def test_a_planted_binding_outside_the_list_is_caught(module: Path, tmp_path: Path) -> None:
    copy = tmp_path / "terraform"
    shutil.copytree(module, copy, ignore=shutil.ignore_patterns(".terraform", ".build"))
    with (copy / "iam.tf").open("a") as f:
        f.write(
            '\nresource "google_project_iam_member" "extra" {\n  project = var.project_id\n'
            '  role    = "roles/pubsub.publisher"\n  member  = "user:someone@example.com"\n}\n'
        )
    problems = binding_resource_problems(copy)
    assert any("google_project_iam_member extra: for_each must be the iam_grants" in p for p in problems), problems
    assert any("iam.tf: names a role" in p for p in problems), problems


def test_a_planted_primitive_or_unjustified_rule_is_caught(module: Path, tmp_path: Path, cat: Catalog) -> None:
    copy = tmp_path / "terraform"
    shutil.copytree(module, copy, ignore=shutil.ignore_patterns(".terraform", ".build"))
    with (copy / "iam_bindings.yaml").open("a") as f:
        f.write("  convenience:\n    role: roles/editor\n    member: build\n    scope: project\n")
    planted = evaluate({"rules": "local.iam_rules", "kinds": "local.iam_kinds", "plan": "local.iam_plan"}, module=copy)
    problems = rule_problems(planted["rules"], planted["kinds"], cat)
    assert "convenience: `why` must say in a sentence why the binding is needed" in problems
    assert [g["key"] for g in planted["plan"].values() if PRIMITIVE.search(g["role"])] == ["convenience//project"]


def test_every_kind_of_grant_has_its_resource(module: Path, grants: list[dict[str, Any]]) -> None:
    handled = set()
    for block in hcl.top_blocks(module):
        match = re.search(r'g\.kind == "(\w+)"', str(block.body.get("for_each", "")))
        if block.kind == "resource" and match:
            handled.add(match[1])
    assert {g["kind"] for g in grants} <= handled


def test_each_function_publishes_only_to_its_emits_and_its_dead_letter_topic(
    grants: list[dict[str, Any]], cat: Catalog
) -> None:
    published = _by_member(grants, "roles/pubsub.publisher")
    for stage in cat.stages:
        assert published.pop(f"function:{stage.name}") == {
            *(f"topic:{t}" for t in stage.emits),
            f"dead_letter_topic:{stage.name}",
        }
    assert set(published) == {"pubsub_agent", "storage_agent"}
    assert published["storage_agent"] == {"data_arrivals_topic"}  # Cloud Storage's notifications, that topic only


def test_the_pubsub_agent_gets_what_dead_lettering_and_push_need(grants: list[dict[str, Any]], cat: Catalog) -> None:
    agent = {(g["role"], g["target"]) for g in grants if g["member"] == "pubsub_agent"}
    # One subscription per stage, keyed by its name; one per trigger for a stage with several (notify).
    subscriptions = {
        s.name: [s.name] if len(s.triggers) == 1 else [f"{s.name}:{t}" for t in s.triggers] for s in cat.stages
    }
    assert agent == {
        pair
        for s in cat.stages
        for pair in (
            ("roles/pubsub.publisher", f"dead_letter_topic:{s.name}"),
            *(("roles/pubsub.subscriber", f"subscription:{key}") for key in subscriptions[s.name]),
            ("roles/iam.serviceAccountTokenCreator", f"service_account:invoker:{s.name}"),
        )
    }


def test_each_push_identity_invokes_its_own_function_only(grants: list[dict[str, Any]], cat: Catalog) -> None:
    invokers = {(g["member"], g["role"], g["target"]) for g in grants if g["member"].startswith("invoker:")}
    assert invokers == {(f"invoker:{s.name}", "roles/run.invoker", f"run_service:{s.name}") for s in cat.stages}


def test_service_access_follows_the_catalog_uses(grants: list[dict[str, Any]], cat: Catalog) -> None:
    for service, prefix in SERVICE_ROLES.items():
        granted = {m.removeprefix("function:") for m in _by_member(grants, prefix) if m.startswith("function:")}
        assert granted == {s.name for s in cat.stages if service in s.uses}, service


def test_only_the_submitters_may_act_as_the_job_accounts(
    grants: list[dict[str, Any]], cat: Catalog, tf_locals: dict[str, Any]
) -> None:
    models = sorted(tf_locals["models"])
    act_as = {(g["member"], g["target"]) for g in grants if g["role"] == "roles/iam.serviceAccountUser"}
    assert act_as == {
        *(
            (f"function:{s.name}", f"service_account:model_training:{m}")
            for s in cat.stages
            if "CD4ML_TRAINING_SERVICE_ACCOUNT" in s.env
            for m in models
        ),
        *(
            (f"function:{s.name}", f"service_account:model_build:{m}")
            for s in cat.stages
            if "CD4ML_BUILD_SERVICE_ACCOUNT" in s.env
            for m in models
        ),
    }


#: Object roles that write: objectCreator creates only; objectUser also overwrites and deletes.
WRITE_ROLES = {"roles/storage.objectCreator", "roles/storage.objectUser"}


def test_bucket_writes_are_narrowed_to_prefixes(grants: list[dict[str, Any]], tf_locals: dict[str, Any]) -> None:
    for g in grants:
        if g["kind"] != "bucket" or g["role"] == "roles/storage.objectViewer":
            continue
        assert g["role"] in WRITE_ROLES, f"{g['key']}: only object roles on buckets"
        bucket = tf_locals["bucket_names"][g["target"]]
        assert g["condition"], f"{g['key']}: a bucket-wide write"
        assert f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/' in g["condition"]["expression"]


def _models(grants: list[dict[str, Any]]) -> set[str]:
    """The models that have their own identities (one per manifest under examples/)."""
    return {g["member"].split(":", 1)[1] for g in grants if g["member"].startswith("model_build:")}


def test_the_trainer_may_create_models_but_not_replace_or_delete_any(grants: list[dict[str, Any]]) -> None:
    """Every training job runs as one account, so a job's rights under runs/ reach every run's model: create only.

    Replacing an existing object needs storage.objects.delete besides storage.objects.create
    (https://cloud.google.com/storage/docs/access-control/iam-permissions), and roles/storage.objectCreator holds
    storage.objects.create without delete (https://cloud.google.com/storage/docs/access-control/iam-roles). The
    digits trainer (examples/digits/trainer/task.py) writes model.joblib and metrics.json once each.
    """
    writes = {
        (g["member"], g["role"], g["target"], g["condition"]["title"] if g["condition"] else None)
        for g in grants
        if g["member"].startswith("model_training:") and g["role"] != "roles/storage.objectViewer"
    }
    assert writes == {
        (f"model_training:{m}", "roles/storage.objectCreator", "bucket:artifact", f"only runs/{m}-")
        for m in _models(grants)
    }


def test_the_pubsub_agent_is_made_before_anything_is_granted_to_it(module: Path) -> None:
    """On a new project the Pub/Sub service agent may not exist yet: google_project_service_identity (google-beta
    only) makes it, and every grant takes the agent's member from it, so Terraform orders the grants after it."""
    resources = {b.address: b for b in hcl.top_blocks(module) if b.kind == "resource"}
    identity = resources.get("google_project_service_identity.pubsub_agent")
    assert identity is not None, "terraform/ makes no google_project_service_identity for the Pub/Sub agent"
    assert identity.body["service"] == "pubsub.googleapis.com"
    assert str(identity.body.get("provider")).removeprefix("${").removesuffix("}") == "google-beta"
    members = hcl.locals_map(module)["iam_members"]
    assert "pubsub_agent = google_project_service_identity.pubsub_agent.member" in " ".join(str(members).split())


def _model_grants(grants: list[dict[str, Any]], member: str) -> set[tuple[str, str, str | None]]:
    return {
        (g["role"], g["target"], g["condition"]["expression"] if g["condition"] else None)
        for g in grants
        if g["member"] == member
    }


def test_each_model_has_its_own_build_and_training_identity(tf_locals: dict[str, Any]) -> None:
    """One account per model and kind, named by cd4ml.identities' rule (what build_image and submit_training name)."""
    from cd4ml import identities

    assert set(tf_locals["model_accounts"]) == set(tf_locals["models"]) == {"digits", "diabetes"}  # examples/
    for model, accounts in tf_locals["model_accounts"].items():
        assert accounts == {
            "build": identities.account_id("build", model),
            "train": identities.account_id("train", model),
        }


def test_a_models_build_touches_only_its_own_repository_and_build_contexts(
    grants: list[dict[str, Any]], tf_locals: dict[str, Any]
) -> None:
    artifacts = tf_locals["bucket_names"]["bucket:artifact"]
    assert _model_grants(grants, "model_build:digits") == {
        ("roles/artifactregistry.writer", "model_repository:digits", None),
        ("roles/logging.logWriter", "project", None),
        (
            "roles/storage.objectViewer",
            "bucket:artifact",
            f'resource.name.startsWith("projects/_/buckets/{artifacts}/objects/builds/digits-") || '
            'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("builds/digits-")',
        ),
    }


def test_a_models_trainer_reads_its_own_datasets_and_creates_under_its_own_runs(
    grants: list[dict[str, Any]], tf_locals: dict[str, Any]
) -> None:
    data, artifacts = tf_locals["bucket_names"]["bucket:data"], tf_locals["bucket_names"]["bucket:artifact"]
    expressions = {
        (role, target): expression for role, target, expression in _model_grants(grants, "model_training:digits")
    }
    assert set(expressions) == {
        ("roles/storage.objectViewer", "bucket:data"),
        ("roles/storage.objectViewer", "bucket:artifact"),
        ("roles/storage.objectCreator", "bucket:artifact"),
    }
    assert f"/buckets/{data}/objects/datasets/digits/" in str(expressions["roles/storage.objectViewer", "bucket:data"])
    assert f"/buckets/{artifacts}/objects/packages/" in str(
        expressions["roles/storage.objectViewer", "bucket:artifact"]
    )
    assert f"/buckets/{artifacts}/objects/runs/digits-" in str(
        expressions["roles/storage.objectCreator", "bucket:artifact"]
    )


def test_only_promote_and_the_models_own_build_write_a_models_images(grants: list[dict[str, Any]]) -> None:
    registry = [g for g in grants if g["role"].startswith("roles/artifactregistry.")]
    writers = {(g["member"], g["target"]) for g in registry if g["role"] != "roles/artifactregistry.reader"}
    assert writers == {
        pair
        for m in _models(grants)
        for pair in (("function:promote", f"model_repository:{m}"), (f"model_build:{m}", f"model_repository:{m}"))
    }
    # submit_training only reads: it pins a trainer image of the model's own repository to its digest
    readers = {(g["member"], g["target"]) for g in registry if g["role"] == "roles/artifactregistry.reader"}
    assert readers == {("function:submit_training", f"model_repository:{m}") for m in _models(grants)}


#: The predefined roles the custom roles replace, and what each would add beyond the calls the stage makes.
REPLACED = {
    "cd4mlLedgerWriter": "roles/datastore.user",
    "cd4mlJobSubmitter": "roles/aiplatform.user",
    "cd4mlJobReader": "roles/aiplatform.viewer",
    "cd4mlBuildSubmitter": "roles/cloudbuild.builds.editor",
}


def test_custom_roles_hold_only_the_calls_and_say_why(module: Path, grants: list[dict[str, Any]]) -> None:
    import yaml

    custom = yaml.safe_load((module / "iam_bindings.yaml").read_text())["custom_roles"]
    assert set(custom) == set(REPLACED)
    for role_id, role in custom.items():
        assert len(role["why"]) <= 256 and REPLACED[role_id] in role["why"], role_id  # IAM's description limit
        assert all(p.split(".")[0] in ("datastore", "aiplatform", "cloudbuild") for p in role["permissions"])
        assert not [p for p in role["permissions"] if p.endswith((".delete", ".setIamPolicy", ".cancel"))], role_id
    used = {g["role"] for g in grants}
    assert {f"custom/{r}" for r in custom} <= used
    assert not used & set(REPLACED.values())  # the broad predefined roles are granted to nobody
