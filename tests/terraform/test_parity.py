"""terraform/ deploys what the event catalog defines and what the local stack creates: no drift.

Two halves meet here. Terraform itself evaluates catalog.tf (the `tf_locals` fixture), which derives every
name and setting from catalog.yaml, the schemas and the manifests; those values must equal cd4ml.catalog and
local_emulator.pubsub.topology.plan. Then python-hcl2 shows that each resource takes its for_each and its settings
from exactly those locals, so what is compared is what is deployed.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("hcl2", reason="python-hcl2 is installed by nox -s terraform")

from local_emulator.pubsub.topology import Subscription, Topology, plan
from local_emulator.scheduler import scheduler_attributes

from cd4ml import catalog as cd4ml_catalog
from cd4ml.catalog import Catalog

from . import hcl
from .evaluate import EXAMPLE_VARIABLES, REPO

REGION = "us-central1"


@pytest.fixture(scope="module")
def cat() -> Catalog:
    return cd4ml_catalog.load()


@pytest.fixture(scope="module")
def topology(cat: Catalog) -> Topology:
    return plan(cat)


@pytest.fixture(scope="module")
def resources(module: Path) -> dict[str, hcl.TopBlock]:
    return {b.address: b for b in hcl.top_blocks(module) if b.kind == "resource"}


def _body(resources: dict[str, hcl.TopBlock], address: str) -> dict[str, Any]:
    assert address in resources, f"terraform/ has no {address}"
    return dict(resources[address].body)


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    assert isinstance(value, list) and hcl.is_block(value) and len(value) == 1, f"expected one `{name} {{ ... }}` block"
    return dict(value[0])


# ---- the sources -------------------------------------------------------------------------------------


def test_catalog_tf_reads_the_files_cd4ml_catalog_reads(module: Path) -> None:
    local = hcl.locals_map(module)
    assert local["catalog"] == '${yamldecode(file("${path.module}/../functions/cd4ml/catalog.yaml"))}'
    assert (module / "../functions/cd4ml/catalog.yaml").resolve() == cd4ml_catalog.CATALOG_FILE.resolve()
    assert local["schemas_dir"] == "${path.module}/../functions/cd4ml/schemas"
    assert (module / "../functions/cd4ml/schemas").resolve() == cd4ml_catalog.SCHEMA_DIR.resolve()
    assert 'fileset(local.schemas_dir, "cd4ml.*.json")' in local["event_types"]


def test_event_types_are_the_schema_files(tf_locals: dict[str, Any], cat: Catalog) -> None:
    assert sorted(tf_locals["event_types"]) == sorted(cat.event_types)
    assert tf_locals["topic_ids"] == {t: cd4ml_catalog.topic_id(t) for t in cat.event_types}


# ---- topics ------------------------------------------------------------------------------------------


def test_topics_equal_the_local_stack(tf_locals: dict[str, Any], topology: Topology) -> None:
    deployed = (
        set(tf_locals["topic_ids"].values())
        | set(tf_locals["foreign_topics"])
        | set(tf_locals["notification_topics"])
        | set(tf_locals["dead_letter_topics"].values())
    )
    assert deployed == set(topology.topics)
    assert len(topology.topics) == len(set(topology.topics))


def test_topic_resources_are_the_derived_topics(resources: dict[str, hcl.TopBlock]) -> None:
    event = _body(resources, "google_pubsub_topic.event")
    assert (event["for_each"], event["name"]) == ("${local.topic_ids}", "${each.value}")
    dead = _body(resources, "google_pubsub_topic.dead_letter")
    assert (dead["for_each"], dead["name"]) == ("${local.dead_letter_topics}", "${each.value}")
    topics = [a for a in resources if a.startswith("google_pubsub_topic.")]
    # Google's topics (cloud-builds, gcr) are read, never created: test_foreign_topics.py.
    notification = _body(resources, "google_pubsub_topic.notification")
    assert (notification["for_each"], notification["name"]) == ("${local.notification_topics}", "${each.key}")
    assert sorted(topics) == [
        "google_pubsub_topic.dead_letter",
        "google_pubsub_topic.event",
        "google_pubsub_topic.notification",
    ]


# ---- subscriptions -----------------------------------------------------------------------------------


def _terraform_subscriptions(tf_locals: dict[str, Any]) -> set[Subscription]:
    subs = {
        Subscription(
            name=s["name"],
            topic=s["topic"],
            stage=s["stage"],
            dead_letter_topic=s["dead_letter_topic"],
            max_delivery_attempts=s["max_delivery_attempts"],
            minimum_backoff_seconds=int(s["minimum_backoff"].removesuffix("s")),
            maximum_backoff_seconds=int(s["maximum_backoff"].removesuffix("s")),
            ack_deadline_seconds=s["ack_deadline_seconds"],
            retention_seconds=None,
        )
        for s in tf_locals["stage_subscriptions"].values()
    }
    holds = {
        Subscription(
            name=h["name"],
            topic=h["topic"],
            stage=None,
            dead_letter_topic=None,
            max_delivery_attempts=None,
            minimum_backoff_seconds=None,
            maximum_backoff_seconds=None,
            ack_deadline_seconds=h["ack_deadline_seconds"],
            retention_seconds=int(h["message_retention_duration"].removesuffix("s")),
        )
        for h in tf_locals["dead_letter_holds"].values()
    }
    return subs | holds


def test_subscriptions_and_dead_letter_settings_equal_the_local_stack(
    tf_locals: dict[str, Any], topology: Topology, cat: Catalog
) -> None:
    assert _terraform_subscriptions(tf_locals) == set(topology.subscriptions)
    by_name = {s["name"]: s for s in tf_locals["stage_subscriptions"].values()}
    for stage in cat.stages:
        assert stage.http or stage.subscriptions[0][0].startswith(cd4ml_catalog.subscription_id(stage.name))
        for name, topic in stage.subscriptions:
            sub = by_name.pop(name)
            assert (sub["topic"], sub["stage"]) == (topic, stage.name)
            assert sub["dead_letter_topic"] == cd4ml_catalog.dead_letter_topic(stage.name)
        assert tf_locals["dead_letter_holds"][stage.name]["name"] == cd4ml_catalog.dead_letter_hold(stage.name)
    assert by_name == {}


def test_a_stage_with_several_triggers_gets_one_subscription_per_topic(tf_locals: dict[str, Any], cat: Catalog) -> None:
    """notify listens to several event types: one push subscription each, all to its function and dead-letter topic."""
    several = [s for s in cat.stages if len(s.triggers) > 1]
    assert several, "the catalog has a stage with several triggers (notify)"
    for stage in several:
        subs = {k: s for k, s in tf_locals["stage_subscriptions"].items() if s["stage"] == stage.name}
        assert set(subs) == {f"{stage.name}:{t}" for t in stage.triggers}
        assert {s["topic"] for s in subs.values()} == {cd4ml_catalog.topic_id(t) for t in stage.triggers}
    single = [s for s in cat.stages if len(s.triggers) == 1]
    assert all(
        tf_locals["stage_subscriptions"][s.name]["name"] == cd4ml_catalog.subscription_id(s.name) for s in single
    )


def test_foreign_triggers_are_the_catalog_foreign_topics(tf_locals: dict[str, Any], cat: Catalog) -> None:
    notified = {n[0] for n in cat.notification_topics}
    assert set(tf_locals["notification_topics"]) == notified
    foreign = {s.name: s.trigger for s in cat.stages if s.foreign and s.trigger not in notified}
    assert foreign, "the catalog has stages on Google's topics"
    assert set(foreign.values()) == set(tf_locals["foreign_topics"]) == set(cat.foreign_topics)
    for stage, topic in foreign.items():
        assert tf_locals["stage_subscriptions"][stage]["topic"] == topic


def test_subscription_resources_take_the_derived_settings(resources: dict[str, hcl.TopBlock]) -> None:
    stage = _body(resources, "google_pubsub_subscription.stage")
    assert stage["for_each"] == "${local.stage_subscriptions}"
    assert stage["name"] == "${each.value.name}"
    assert stage["topic"] == "projects/${var.project_id}/topics/${each.value.topic}"
    assert stage["ack_deadline_seconds"] == "${each.value.ack_deadline_seconds}"
    retry = _block(stage, "retry_policy")
    assert (retry["minimum_backoff"], retry["maximum_backoff"]) == (
        "${each.value.minimum_backoff}",
        "${each.value.maximum_backoff}",
    )
    dead = _block(stage, "dead_letter_policy")
    assert dead["max_delivery_attempts"] == "${each.value.max_delivery_attempts}"
    assert dead["dead_letter_topic"] == "${google_pubsub_topic.dead_letter[each.value.stage].id}"
    push = _block(stage, "push_config")
    # functions-framework makes a messagePublished CloudEvent of a push only on a /projects/P/topics/T path.
    assert push["push_endpoint"].endswith("/projects/${var.project_id}/topics/${each.value.topic}")
    assert "google_cloudfunctions2_function.stage[each.value.stage]" in push["push_endpoint"]
    oidc = _block(push, "oidc_token")
    assert oidc["service_account_email"] == "${google_service_account.invoker[each.value.stage].email}"
    assert "event_trigger" not in _body(resources, "google_cloudfunctions2_function.stage")

    hold = _body(resources, "google_pubsub_subscription.dead_letter_hold")
    assert hold["for_each"] == "${local.dead_letter_holds}"
    assert hold["name"] == "${each.value.name}"
    assert hold["topic"] == "${google_pubsub_topic.dead_letter[each.key].id}"
    assert hold["message_retention_duration"] == "${each.value.message_retention_duration}"
    assert hold["ack_deadline_seconds"] == "${each.value.ack_deadline_seconds}"
    assert "push_config" not in hold


def test_the_dead_letter_topic_of_a_subscription_is_its_stage_s(tf_locals: dict[str, Any]) -> None:
    for sub in tf_locals["stage_subscriptions"].values():
        assert sub["dead_letter_topic"] == tf_locals["dead_letter_topics"][sub["stage"]]
        assert tf_locals["dead_letter_holds"][sub["stage"]]["topic"] == tf_locals["dead_letter_topics"][sub["stage"]]


# ---- functions and their environment ------------------------------------------------------------------


def test_environment_variable_names_equal_the_local_stack(tf_locals: dict[str, Any], topology: Topology) -> None:
    assert {s: sorted(names) for s, names in tf_locals["function_env_names"].items()} == {
        s: sorted(names) for s, names in topology.stage_env.items()
    }


def test_every_catalog_setting_has_a_value_and_nothing_else_does(
    module: Path, tf_locals: dict[str, Any], cat: Catalog
) -> None:
    valued = set(hcl.locals_map(module)["setting_values"]) | {
        name for per_stage in tf_locals["stage_settings"].values() for name in per_stage
    }
    assert valued == {s.name for s in cat.settings}


def test_functions_set_exactly_the_derived_environment(resources: dict[str, hcl.TopBlock]) -> None:
    fn = _body(resources, "google_cloudfunctions2_function.stage")
    assert fn["for_each"] == "${local.stages}"
    service = _block(fn, "service_config")
    assert service["environment_variables"] == (
        "${{for name in local.function_env_names[each.key] : "
        "name => merge(local.setting_values, local.stage_settings[each.key])[name]}}"
    )
    assert service["available_memory"] == "${each.value.memory}"
    assert service["timeout_seconds"] == "${each.value.timeout_seconds}"
    assert service["service_account_email"] == "${google_service_account.function[each.key].email}"
    # internal only (Pub/Sub's pushes), but the decision endpoint people call (its invoker IAM admits the approvers)
    assert (
        service["ingress_settings"] == '${contains(local.http_stages, each.key) ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"}'
    )
    build = _block(fn, "build_config")
    assert (build["entry_point"], build["runtime"]) == ("${each.key}", "python311")


def test_every_stage_is_an_entry_point_of_functions_main(cat: Catalog) -> None:
    """Terraform's entry_point is the stage name: main.py exports one per stage of the registry (cd4ml.stages), the
    one HTTP stage by name. (That functions-framework finds each is tests/unit/test_stage_registry.py's.)"""
    tree = ast.parse((REPO / "functions" / "cd4ml" / "stages" / "__init__.py").read_text())
    registered = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Stage"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    main = (REPO / "functions" / "main.py").read_text()
    assert {s.name for s in cat.stages} == registered
    assert "for stage in STAGES if not stage.spec.http" in main
    assert all(f"def {s.name}(" in main for s in cat.stages if s.http)


# ---- schedules ---------------------------------------------------------------------------------------


def _manifests() -> dict[str, Any]:
    found = {}
    for path in sorted((REPO / "examples").glob("**/manifest.yaml")):
        manifest = yaml.safe_load(path.read_text())
        found[manifest["name"]] = manifest
    return found


def _expected_job(job: str, event_type: str, schedule: str, time_zone: str, data: Any) -> dict[str, Any]:
    """What the local scheduler publishes, with Cloud Scheduler's location in place of "local"."""
    attributes = scheduler_attributes(EXAMPLE_VARIABLES["project_id"], job, event_type)
    attributes["ce-source"] = attributes["ce-source"].replace("/locations/local/", f"/locations/{REGION}/")
    return {"job": job, "schedule": schedule, "time_zone": time_zone, "data": data, "attributes": attributes}


def test_schedules_equal_the_manifests_and_the_local_scheduler(tf_locals: dict[str, Any]) -> None:
    manifests = _manifests()
    assert manifests, "examples/ has at least one manifest.yaml"
    expected = {
        name: _expected_job(
            f"cd4ml-{name}",
            "cd4ml.run.requested.v1",
            m["schedule"],
            m.get("time_zone", "Etc/UTC"),
            {"model": name, "trigger": "schedule"},
        )
        for name, m in manifests.items()
    }
    expected["watch-tick"] = _expected_job("cd4ml-watch-tick", "cd4ml.watch.ticked.v1", "* * * * *", "Etc/UTC", {})
    deployed = {k: {**v, "data": json.loads(v["data"])} for k, v in tf_locals["schedules"].items()}
    assert deployed == expected
    assert sorted(tf_locals["manifest_files"]) == sorted(manifests)


def test_scheduler_jobs_take_the_derived_schedules(resources: dict[str, hcl.TopBlock], module: Path) -> None:
    job = _body(resources, "google_cloud_scheduler_job.job")
    assert job["for_each"] == "${local.schedules}"
    assert (job["name"], job["schedule"], job["time_zone"]) == (
        "${each.value.job}",
        "${each.value.schedule}",
        "${each.value.time_zone}",
    )
    target = _block(job, "pubsub_target")
    assert target["topic_name"] == '${google_pubsub_topic.event[each.value.attributes["ce-type"]].id}'
    assert target["data"] == "${base64encode(each.value.data)}"
    assert target["attributes"] == "${each.value.attributes}"
    assert [a for a in resources if a.startswith("google_cloud_scheduler_job.")] == ["google_cloud_scheduler_job.job"]
    variables = {b.labels[0]: b.body for b in hcl.top_blocks(module) if b.kind == "variable"}
    assert variables["manifests_dir"]["default"] == "../examples"


def test_manifests_are_uploaded_where_the_functions_read_them(resources: dict[str, hcl.TopBlock]) -> None:
    from cd4ml.manifest import manifest_object

    upload = _body(resources, "google_storage_bucket_object.manifest")
    assert upload["for_each"] == "${local.manifest_files}"
    assert upload["name"] == manifest_object("${each.key}")
    assert upload["bucket"] == '${google_storage_bucket.bucket["artifacts"].name}'
