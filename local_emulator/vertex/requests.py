"""Request checks of the local Vertex AI stand-in: resource names, CustomJob validation, list filters.

Pure functions over the ``aiplatform_v1`` request values, so the gRPC layer stays thin and every
rule can be tested without a server. Problems are collected and reported at once, like Vertex's own
"List of found errors" messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.cloud import aiplatform_v1

from local_emulator.vertex.images import UnknownExecutorImage, executor_image

_PARENT = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)$")
_JOB_NAME = re.compile(r"^projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/customJobs/(?P<id>[0-9]+)$")
# Google Cloud label rules, restricted to ASCII (the real rule also admits international letters).
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_MAX_LABELS = 64
_MAX_DISPLAY_NAME = 128

_AND = re.compile(r"\s+AND\s+")
_TERM = re.compile(
    r"^(?P<field>labels\.[A-Za-z0-9_.-]+|display_name|state)\s*(?P<op>=|:)\s*"
    r"""(?P<value>"[^"]*"|'[^']*'|[^\s"']+)\s*$"""
)

JobState = aiplatform_v1.JobState


class VertexRequestError(Exception):
    """Base of the errors the stand-in answers an RPC with."""


class InvalidRequest(VertexRequestError, ValueError):
    """The request is malformed (gRPC INVALID_ARGUMENT); ``problems`` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        numbered = "".join(f"\t{i}.{p}" for i, p in enumerate(problems, start=1))
        super().__init__(f"List of found errors:{numbered}\t")


class JobNotFound(VertexRequestError, LookupError):
    """No CustomJob has the requested name (gRPC NOT_FOUND)."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"The CustomJob does not exist: {name}")


class JobNotCancellable(VertexRequestError, RuntimeError):
    """The CustomJob has already ended (gRPC FAILED_PRECONDITION)."""

    def __init__(self, name: str, state: str) -> None:
        self.name = name
        self.state = state
        super().__init__(f"Cannot cancel CustomJob {name}: it is already in state {state}.")


class ServiceClosing(VertexRequestError, RuntimeError):
    """The stand-in is shutting down and takes no new jobs (gRPC UNAVAILABLE)."""

    def __init__(self) -> None:
        super().__init__("The local Vertex AI stand-in is shutting down.")


@dataclass(frozen=True)
class Location:
    """A ``projects/{project}/locations/{location}`` parent."""

    project: str
    location: str

    @property
    def parent(self) -> str:
        """The resource name of this location."""
        return f"projects/{self.project}/locations/{self.location}"

    def job_name(self, job_id: str) -> str:
        """The resource name of a CustomJob in this location."""
        return f"{self.parent}/customJobs/{job_id}"


@dataclass(frozen=True)
class JobName:
    """A parsed ``projects/{project}/locations/{location}/customJobs/{id}`` name."""

    where: Location
    job_id: str


def parse_parent(parent: str) -> Location:
    """Parse a list/create parent, or raise InvalidRequest."""
    match = _PARENT.match(parent)
    if match is None:
        raise InvalidRequest(
            [
                f"Field: parent; Message: Invalid resource name {parent!r}, "
                "expected projects/{project}/locations/{location}."
            ]
        )
    return Location(match["project"], match["location"])


def parse_job_name(name: str) -> JobName:
    """Parse a CustomJob resource name, or raise InvalidRequest."""
    match = _JOB_NAME.match(name)
    if match is None:
        raise InvalidRequest(
            [
                f"Field: name; Message: Invalid resource name {name!r}, "
                "expected projects/{project}/locations/{location}/customJobs/{numeric id}."
            ]
        )
    return JobName(Location(match["project"], match["location"]), match["id"])


def check_custom_job(job: aiplatform_v1.CustomJob, registry: str | None = None) -> None:
    """Raise InvalidRequest listing every reason Vertex AI (or, for container images, this stand-in) rejects the job.

    ``registry`` is the local registry's ``host:port``: the only place container_spec images can come from.
    """
    problems: list[str] = []
    if not job.display_name:
        problems.append("Field: custom_job.display_name; Message: Required field is not set.")
    elif len(job.display_name) > _MAX_DISPLAY_NAME:
        problems.append(f"Field: custom_job.display_name; Message: Must be at most {_MAX_DISPLAY_NAME} characters.")
    problems.extend(_label_problems(dict(job.labels)))
    pools = list(job.job_spec.worker_pool_specs)
    if not pools:
        problems.append(
            "Field: custom_job.job_spec.worker_pool_specs; Message: At least one worker pool spec must be specified."
        )
    for index, pool in enumerate(pools):
        problems.extend(_pool_problems(index, pool, registry))
    if job.job_spec.base_output_directory.output_uri_prefix and not (
        job.job_spec.base_output_directory.output_uri_prefix.startswith("gs://")
    ):
        problems.append(
            "Field: custom_job.job_spec.base_output_directory.output_uri_prefix; "
            "Message: Must be a Cloud Storage URI starting with gs://."
        )
    if problems:
        raise InvalidRequest(problems)


def _label_problems(labels: dict[str, str]) -> list[str]:
    problems = []
    if len(labels) > _MAX_LABELS:
        problems.append(f"Field: custom_job.labels; Message: At most {_MAX_LABELS} labels are allowed.")
    for key, value in sorted(labels.items()):
        if not _LABEL_KEY.match(key):
            problems.append(
                f"Field: custom_job.labels; Message: Invalid label key {key!r}: keys start with a "
                "lowercase letter and have at most 63 lowercase letters, digits, '_' or '-'."
            )
        if not _LABEL_VALUE.match(value):
            problems.append(
                f"Field: custom_job.labels; Message: Invalid value {value!r} of label {key!r}: values "
                "have at most 63 lowercase letters, digits, '_' or '-'."
            )
    return problems


def _pool_problems(index: int, pool: aiplatform_v1.WorkerPoolSpec, registry: str | None) -> list[str]:
    field = f"custom_job.job_spec.worker_pool_specs[{index}]"
    has_container = "container_spec" in pool
    has_package = "python_package_spec" in pool
    if index > 0 and pool.replica_count == 0 and not (has_container or has_package):
        return []  # an empty placeholder pool, as Vertex allows for pools 1..3
    problems = []
    if index == 0 and pool.replica_count != 1:
        problems.append(
            f"Field: {field}.replica_count; Message: The first worker pool (the primary replica) "
            f"must have replica_count 1, got {pool.replica_count}."
        )
    if not pool.machine_spec.machine_type:
        problems.append(f"Field: {field}.machine_spec.machine_type; Message: Required field is not set.")
    if has_container == has_package:
        problems.append(f"Field: {field}; Message: Exactly one of container_spec or python_package_spec must be set.")
    if has_container and not pool.container_spec.image_uri:
        problems.append(f"Field: {field}.container_spec.image_uri; Message: Required field is not set.")
    elif has_container:
        problems.extend(_container_problems(field, pool.container_spec.image_uri, registry))
    if has_package:
        spec = pool.python_package_spec
        if not spec.executor_image_uri:
            problems.append(
                f"Field: {field}.python_package_spec.executor_image_uri; Message: Required field is not set."
            )
        else:
            try:
                executor_image(spec.executor_image_uri)
            except UnknownExecutorImage as exc:
                problems.append(f"Field: {field}.python_package_spec.executor_image_uri; Message: {exc}")
        if not spec.python_module:
            problems.append(f"Field: {field}.python_package_spec.python_module; Message: Required field is not set.")
        if not spec.package_uris:
            problems.append(f"Field: {field}.python_package_spec.package_uris; Message: Required field is not set.")
        for uri in spec.package_uris:
            if not uri.startswith("gs://") or len(uri.split("/", 3)) < 4:
                problems.append(
                    f"Field: {field}.python_package_spec.package_uris; Message: {uri!r} is not a "
                    "Cloud Storage object URI (gs://BUCKET/OBJECT)."
                )
    return problems


def _container_problems(field: str, image_uri: str, registry: str | None) -> list[str]:
    """The stand-in's own limit: it can only run images it can pull, i.e. those of the local registry.

    Vertex AI itself takes any Artifact Registry or Docker Hub image the job's service agent can pull
    (https://cloud.google.com/vertex-ai/docs/training/configure-container-settings).
    """
    host = image_uri.split("/", 1)[0] if "/" in image_uri else ""
    if registry and host == registry:
        return []
    where = f"the local registry {registry}" if registry else "a local registry (none is configured: --registry)"
    return [
        f"Field: {field}.container_spec.image_uri; Message: {image_uri!r} cannot run locally: the local "
        f"Vertex AI stand-in only runs images from {where}. On Vertex AI this job would pull the image "
        "from its own registry; push the image to the local registry to train with it here."
    ]


@dataclass(frozen=True)
class JobFilter:
    """An AND of simple ``ListCustomJobs`` filter terms: labels, display_name and state."""

    labels: tuple[tuple[str, str | None], ...] = ()
    """(key, value) pairs; a None value means the label only has to be present (``labels.k:*``)."""
    display_name: str | None = None
    state: int | None = None

    @classmethod
    def parse(cls, text: str) -> JobFilter:
        """Parse ``labels.k="v" AND labels.k2=v2 AND display_name="x" AND state=JOB_STATE_…``."""
        if not text.strip():
            return cls()
        labels: list[tuple[str, str | None]] = []
        display_name: str | None = None
        state: int | None = None
        problems = []
        for raw in _AND.split(text.strip()):
            term = _TERM.match(raw)
            if term is None:
                problems.append(
                    f"Field: filter; Message: Unsupported filter term {raw!r}: the local Vertex AI "
                    'stand-in supports labels.KEY="VALUE", labels.KEY:*, display_name="…" and '
                    "state=JOB_STATE_…, combined with AND."
                )
                continue
            field, op, value = term["field"], term["op"], _unquote(term["value"])
            if field.startswith("labels."):
                key = field.removeprefix("labels.")
                if op == ":" and value != "*":
                    problems.append(f"Field: filter; Message: Only labels.{key}:* is supported with ':'.")
                labels.append((key, None if op == ":" else value))
            elif op != "=":
                problems.append(f"Field: filter; Message: Use '=' with {field}.")
            elif field == "display_name":
                display_name = value
            elif value in JobState.__members__:
                state = int(JobState.__members__[value])
            else:
                problems.append(f"Field: filter; Message: Unknown job state {value!r}.")
        if problems:
            raise InvalidRequest(problems)
        return cls(tuple(labels), display_name, state)

    def matches(self, job: aiplatform_v1.CustomJob) -> bool:
        """Whether the job satisfies every term."""
        for key, value in self.labels:
            if key not in job.labels or (value is not None and job.labels[key] != value):
                return False
        if self.display_name is not None and job.display_name != self.display_name:
            return False
        return self.state is None or int(job.state) == self.state


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value
