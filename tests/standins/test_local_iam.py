"""The local IAM policy (terraform/iam_bindings.yaml over the catalog), the GCS request → permission mapping and
Pub/Sub's publish limits, without any emulator. The proxies that apply them are in tests/contract/test_local_iam.py.
"""

from __future__ import annotations

import grpc
import pytest
import yaml
from google.pubsub_v1.types import PublishRequest, PubsubMessage
from local_emulator.iam import policy as iam_policy
from local_emulator.iam.policy import Policy
from local_emulator.pubsub.limits import publish_problem
from local_emulator.pubsub.proxy import NOT_AUTHORIZED, publish_refusal
from local_emulator.storage.access import Need, denial, required

from cd4ml import catalog

DATA, ARTIFACTS = "p-data", "p-artifacts"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return iam_policy.load("p", DATA, ARTIFACTS)


def test_submit_training_may_publish_its_events_and_its_dead_letter_topic_only(policy: Policy) -> None:
    assert policy.topics("function:submit_training") == {
        "cd4ml-training-submitted-v1",
        "cd4ml-training-failed-v1",
        "cd4ml-training-completed-v1",  # a training cache hit completes without a job
        "cd4ml-run-failed-v1",  # it gives up on its last delivery: the run's ending is announced
        "cd4ml-submit-training-dead-letter",
    }


def test_the_storage_agent_may_publish_to_the_data_arrivals_topic_only(policy: Policy) -> None:
    assert policy.topics("storage_agent") == {"cd4ml-data-arrivals"}


def test_every_stage_publishes_exactly_what_terraform_grants(policy: Policy) -> None:
    """The same expectation as tests/terraform/test_iam.py: catalog `emits` plus the own dead-letter topic."""
    for stage in catalog.load().stages:
        assert policy.topics(f"function:{stage.name}") == {
            *(catalog.topic_id(t) for t in stage.emits),
            catalog.dead_letter_topic(stage.name),
        }, stage.name
    assert policy.topics("training") == policy.topics("build") == set()


def test_the_policy_follows_the_bindings_file() -> None:
    """Removing a rule from iam_bindings.yaml removes the grant locally: nothing is typed twice."""
    rules = yaml.safe_load(iam_policy.BINDINGS_FILE.read_text())["bindings"]
    del rules["publish_own_rejects"]
    narrowed = iam_policy.expand(rules, catalog.load(), {"bucket:data": DATA, "bucket:artifact": ARTIFACTS}, "p")
    assert "cd4ml-evaluate-dead-letter" not in narrowed.topics("function:evaluate")
    assert "cd4ml-evaluation-passed-v1" in narrowed.topics("function:evaluate")


def test_training_writes_only_under_runs_and_reads_packages_and_datasets(policy: Policy) -> None:
    create = "storage.objects.create"
    assert policy.allows_object("training", create, ARTIFACTS, name="runs/digits-1/model/model.joblib")
    assert not policy.allows_object("training", create, ARTIFACTS, name="manifests/digits.yaml")
    assert not policy.allows_object("training", create, DATA, name="datasets/digits/x")
    assert policy.allows_object("training", "storage.objects.get", ARTIFACTS, name="packages/digits.tar.gz")
    assert policy.allows_object("training", "storage.objects.get", DATA, name="datasets/digits/abc/part.csv")
    assert not policy.allows_object("training", "storage.objects.get", DATA, name="sources/digits/digits.csv")


def test_prefix_conditions_apply_to_object_names_and_list_prefixes(policy: Policy) -> None:
    """catalog.tf's condition: resource.name under the prefix, or objectListPrefix starting with it."""
    watch = "function:watch_training"
    assert policy.allows_object(watch, "storage.objects.list", ARTIFACTS, list_prefix="runs/r-1/model/")
    assert not policy.allows_object(watch, "storage.objects.list", ARTIFACTS, list_prefix="")
    assert not policy.allows_object(watch, "storage.objects.list", ARTIFACTS, list_prefix="run")
    assert not policy.allows_object(watch, "storage.objects.get", ARTIFACTS, name="builds/r-1/context.tar.gz")
    fetch = "function:fetch_data"
    assert policy.allows_object(fetch, "storage.objects.list", DATA, list_prefix="")  # the data bucket, anywhere
    assert policy.allows_object(fetch, "storage.objects.create", DATA, name="datasets/digits/abc/x.csv")
    assert not policy.allows_object(fetch, "storage.objects.create", DATA, name="sources/digits/x.csv")
    assert policy.allows_object("build", "storage.objects.get", ARTIFACTS, name="builds/r-1/context.tar.gz")
    assert not policy.allows_object("build", "storage.objects.get", ARTIFACTS, name="runs/r-1/model/model.joblib")


def test_no_identity_but_admin_may_touch_buckets(policy: Policy) -> None:
    for identity in policy.identities():
        allowed = policy.allows_object(identity, "storage.buckets.get", DATA)
        assert allowed == (identity == iam_policy.ADMIN), identity


def test_principals_are_the_terraform_service_accounts(policy: Policy) -> None:
    assert policy.principal("function:fetch_data") == "cd4ml-fetch-data@p.iam.gserviceaccount.com"
    assert policy.principal("training") == "cd4ml-training@p.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        (
            "GET",
            "/download/storage/v1/b/b1/o/runs%2Fr%2Fmodel.joblib",
            "alt=media",
            Need("storage.objects.get", "b1", "runs/r/model.joblib"),
        ),
        (
            "GET",
            "/storage/v1/b/b1/o",
            "prefix=runs%2Fr%2F&projection=noAcl",
            Need("storage.objects.list", "b1", list_prefix="runs/r/"),
        ),
        ("GET", "/storage/v1/b/b1/o", "", Need("storage.objects.list", "b1", list_prefix="")),
        ("DELETE", "/storage/v1/b/b1/o/a%2Fb", "", Need("storage.objects.delete", "b1", "a/b")),
        ("PATCH", "/storage/v1/b/b1/o/a", "", Need("storage.objects.update", "b1", "a")),
        ("GET", "/storage/v1/b/b1", "", Need("storage.buckets.get", "b1")),
        (
            "POST",
            "/upload/storage/v1/b/b1/o",
            "uploadType=media&name=builds%2Fr%2Fc.tgz",
            Need("storage.objects.create", "b1", "builds/r/c.tgz", overwrite_check=True),
        ),
    ],
)
def test_each_json_api_call_needs_the_documented_permission(method: str, path: str, query: str, expected: Need) -> None:
    assert required(method, path, query, b"", "").needs == (expected,)


def test_an_upload_names_its_object_in_its_metadata() -> None:
    """google-cloud-storage's multipart upload puts the name in the first (JSON) part, resumable in the body."""
    body = (
        b'--==0==\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{"name": "runs/r/m.bin"}\r\n'
        b"--==0==\r\ncontent-type: application/octet-stream\r\n\r\nDATA\r\n--==0==--"
    )
    multipart = required(
        "POST", "/upload/storage/v1/b/b1/o", "uploadType=multipart", body, 'multipart/related; boundary="==0=="'
    )
    assert multipart.needs == (Need("storage.objects.create", "b1", "runs/r/m.bin", overwrite_check=True),)
    resumable = required(
        "POST", "/upload/storage/v1/b/b1/o", "uploadType=resumable", b'{"name": "x/y"}', "application/json"
    )
    assert resumable.needs[0].name == "x/y"
    assert (
        required("PUT", "/upload/storage/v1/b/b1/o", "uploadType=resumable&upload_id=u1", b"", "").resumable_session
        == "u1"
    )


def test_a_copy_needs_get_on_the_source_and_create_on_the_destination() -> None:
    access = required("POST", "/storage/v1/b/src/o/sources%2Fa.csv/copyTo/b/dst/o/datasets%2Fm%2Fa.csv", "", b"", "")
    assert access.needs == (
        Need("storage.objects.get", "src", "sources/a.csv"),
        Need("storage.objects.create", "dst", "datasets/m/a.csv", overwrite_check=True),
    )


def test_a_batch_request_is_not_judged_so_not_forwarded() -> None:
    assert required("POST", "/batch/storage/v1", "", b"", "multipart/mixed").unsupported


def test_the_403_body_is_gcs_json_error() -> None:
    body = denial("sa@p.iam.gserviceaccount.com", Need("storage.objects.list", "b1", list_prefix=""))
    assert body["error"] == {
        "code": 403,
        "message": "sa@p.iam.gserviceaccount.com does not have storage.objects.list access to the Google Cloud "
        "Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not exist).",
        "errors": [{"message": body["error"]["message"], "domain": "global", "reason": "forbidden"}],  # type: ignore[index]
    }


# ---- Pub/Sub publish limits: https://cloud.google.com/pubsub/quotas#resource_limits -------------------------


def _problem(*messages: PubsubMessage) -> str | None:
    request = PublishRequest(topic="projects/p/topics/t", messages=list(messages))
    return publish_problem(PublishRequest.pb(request), len(PublishRequest.serialize(request)))


def test_100_attributes_pass_and_101_are_refused() -> None:
    assert _problem(PubsubMessage(data=b"x", attributes={f"k{i}": "v" for i in range(100)})) is None
    assert "101 attributes" in str(_problem(PubsubMessage(data=b"x", attributes={f"k{i}": "v" for i in range(101)})))


def test_attribute_keys_and_values_are_limited_in_bytes_not_characters() -> None:
    assert _problem(PubsubMessage(data=b"x", attributes={"k" * 256: "v"})) is None
    assert "key that is too long" in str(_problem(PubsubMessage(data=b"x", attributes={"k" * 257: "v"})))
    assert _problem(PubsubMessage(data=b"x", attributes={"cd4ml-error": "e" * 1024})) is None
    refused = _problem(PubsubMessage(data=b"x", attributes={"cd4ml-error": "é" * 513}))  # 1026 bytes, 513 chars
    assert refused == (
        'The attribute "cd4ml-error" in the request has a value that is too long. The length is 1026 '
        "characters, but the maximum allowed is 1024. Refer to https://cloud.google.com/pubsub/quotas "
        "for more information."
    )


def test_a_message_needs_data_or_an_attribute() -> None:
    assert "must contain either non-empty data, or at least one attribute" in str(_problem(PubsubMessage()))
    assert _problem(PubsubMessage(attributes={"a": "b"})) is None


def test_request_size_and_message_count_are_limited() -> None:
    big = PubsubMessage(data=b"x" * (10 * 1024 * 1024))
    assert _problem(big) == "Request payload size exceeds the limit: 10485760 bytes."
    assert "maximum value is 1000" in str(_problem(*[PubsubMessage(data=b"x")] * 1001))
    assert _problem(*[PubsubMessage(data=b"x")] * 1000) is None


def test_publish_is_refused_outside_the_grants_and_outside_the_project(policy: Policy) -> None:
    def refusal(identity: str, topic: str) -> tuple[grpc.StatusCode, str] | None:
        request = PublishRequest(topic=topic, messages=[PubsubMessage(data=b"{}")])
        return publish_refusal(policy, identity, PublishRequest.serialize(request))

    denied = (grpc.StatusCode.PERMISSION_DENIED, NOT_AUTHORIZED)
    assert refusal("function:evaluate", "projects/p/topics/cd4ml-evaluation-passed-v1") is None
    assert refusal("function:evaluate", "projects/p/topics/cd4ml-image-pushed-v1") == denied
    assert refusal("function:evaluate", "projects/other/topics/cd4ml-evaluation-passed-v1") == denied
    assert refusal("admin", "projects/other/topics/anything") is None
