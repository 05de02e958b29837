"""What Cloud Build refuses in CreateBuild (INVALID_ARGUMENT), checked before anything runs.

The rules and their wording follow Google's own validator, open-sourced as GoogleCloudPlatform/cloud-build-local
(`validate/validate.go`, `subst/subst.go`, at ee60480), updated where the service has moved on:
- the built-in substitutions are those of https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values
  (PROJECT_NUMBER, LOCATION, TRIGGER_NAME, REPO_FULL_NAME, REF_NAME, ... are newer than validate.go);
- the service-account rule and its message are the service's (quoted in e.g. googleapis/sdk-platform-java#3342);
- message prefixes ("invalid build: ", "invalid value for 'build.substitutions': ") are those the service answers
  with (kubernetes/cloud-provider-gcp#810, google/trillian-examples#627).
Cloud Build answers with the first problem it finds; so does this module (substitution mismatches, like the
service, are reported together, joined by ";").
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import timedelta

from google.cloud.devtools.cloudbuild_v1.types import cloudbuild

from local_emulator.cloudbuild.steps import parameters, substitute

Options = cloudbuild.BuildOptions

# validate.go: `validUserSubstKeyRE`; the docs: "must begin with an underscore (_) and use only uppercase-letters
# and numbers (respecting the regular expression _[A-Z0-9_]+)".
USER_KEY = re.compile(r"^_[A-Z0-9_]+$")
#: Built-ins of every build; not overridable in `substitutions` (substitute-variable-values, "Using default
#: substitutions"; validate.go marks PROJECT_ID and BUILD_ID not overridable).
BUILTINS_ALWAYS = frozenset({"PROJECT_ID", "BUILD_ID", "PROJECT_NUMBER", "LOCATION"})
#: Built-ins that triggers define; a build created directly may set them in `substitutions` (the docs' list for
#: `gcloud builds submit --substitutions`), and they are "" otherwise ("builds that use storage source").
BUILTINS_OF_TRIGGERS = frozenset(
    {
        "TRIGGER_NAME",
        "COMMIT_SHA",
        "REVISION_ID",
        "SHORT_SHA",
        "REPO_NAME",
        "REPO_FULL_NAME",
        "BRANCH_NAME",
        "TAG_NAME",
        "REF_NAME",
        "TRIGGER_BUILD_CONFIG_PATH",
        "SERVICE_ACCOUNT_EMAIL",
        "SERVICE_ACCOUNT",
    }
)
# $_HEAD_BRANCH, $_BASE_BRANCH, $_HEAD_REPO_URL, $_PR_NUMBER are user-format keys that only pull-request triggers
# define: in a build created directly they are ordinary user substitutions (MUST_MATCH refuses them undefined).

# Limits of validate.go (the service's own, mirrored there).
MAX_TIMEOUT = timedelta(hours=24)
# A step arg: validate.go says 4000, but Cloud Build raised it to 10,000 (its own refusal since 2024: "invalid .steps
# field: build step 1 arg 1 too long (max: 10000)", quoted in hushh-labs/hushh-research#4796 and getsentry/sentry#69738;
# 4000 in 2020-2022 reports such as GoogleContainerTools/distroless#619).
_MAX_STEPS, _MAX_STEP_NAME, _MAX_ARGS, _MAX_ARG, _MAX_DIR = 100, 1000, 100, 10000, 1000
_MAX_ENVS, _MAX_ENV = 100, 1000
_MAX_IMAGES, _MAX_IMAGE = 100, 1000
_MAX_SUBSTITUTIONS, _MAX_KEY, _MAX_VALUE = 100, 100, 4000
_MAX_TAGS, _MAX_ARTIFACT_PATHS = 64, 100
START_STEP = "-"

# docker/distribution reference grammar, as validate.go builds `validImageTagRE` and `validBuildTagRE` from it.
# Go's \w is ASCII-only, hence re.ASCII.
_TAG = r"[\w][\w.-]{0,127}"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
IMAGE = re.compile(rf"^({_NAME}(@sha256:{_TAG}|:{_TAG})?)$", re.ASCII)
# The service prints this pattern as `^[\w][\w.-]{0,127}$` (kubernetes/cloud-provider-gcp#810).
BUILD_TAG = re.compile(rf"^{_TAG}$", re.ASCII)
# cloudbuild.proto, Build.service_account: "Must be of the format projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}".
_SERVICE_ACCOUNT = re.compile(r"^projects/[^/]+/serviceAccounts/[^/]+$")
# The service's message (the rule: https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts,
# "you must store your build logs either in Cloud Logging or in a user-created Cloud Storage bucket").
SERVICE_ACCOUNT_NEEDS_LOGS = (
    "if 'build.service_account' is specified, the build must either (a) specify 'build.logs_bucket', "
    "(b) use the REGIONAL_USER_OWNED_BUCKET build.options.default_logs_bucket_behavior option, "
    "or (c) use either CLOUD_LOGGING_ONLY / NONE logging options"
)
_LOGGING_WITHOUT_DEFAULT_BUCKET = frozenset(
    {Options.LoggingMode.CLOUD_LOGGING_ONLY, Options.LoggingMode.STACKDRIVER_ONLY, Options.LoggingMode.NONE}
)


class InvalidBuild(ValueError):
    """A CreateBuild request Cloud Build refuses with INVALID_ARGUMENT; str() is the service's message."""


def builtin_values(build: cloudbuild.Build, project: str, location: str) -> dict[str, str]:
    """Every built-in substitution's value for a build created directly (not by a trigger), user overrides applied.

    PROJECT_NUMBER and the default service account are unknown locally: "" (as the service does for any built-in
    it cannot fill).
    """
    account = build.service_account.rsplit("/", 1)[-1] if build.service_account else ""
    values = dict.fromkeys(BUILTINS_OF_TRIGGERS, "")
    values.update(
        {
            "PROJECT_ID": project,
            "BUILD_ID": build.id,
            "PROJECT_NUMBER": "",
            "LOCATION": location,
            "SERVICE_ACCOUNT": build.service_account,
            "SERVICE_ACCOUNT_EMAIL": account if "@" in account else "",
        }
    )
    values.update(build.substitutions)
    return values


def validate(build: cloudbuild.Build, values: Mapping[str, str]) -> None:
    """Raise InvalidBuild with the service's message for the first rule the request breaks.

    `values` are the substitutions in force (builtin_values), used for the checks Cloud Build makes after
    substituting (step names, images, tags).
    """
    _check_timeout(build)
    _check_substitution_keys(build.substitutions)
    _check_artifacts(build)
    _check_steps(build)
    _check_template(build)
    _check_env(build)
    _check_service_account(build)
    _check_after_substitutions(build, values)


def _check_timeout(build: cloudbuild.Build) -> None:
    # validate.go CheckBuild; cloudbuild.proto Build.timeout.
    if "timeout" not in build:
        return
    if build.timeout > MAX_TIMEOUT:
        raise InvalidBuild("timeout exceeds the timeout limit of 24h0m0s")
    if build.timeout < timedelta(0):
        raise InvalidBuild("invalid timeout: timeout must be >=0")


def _check_substitution_keys(substitutions: Mapping[str, str]) -> None:
    # validate.go CheckSubstitutionsLoose: user keys match _[A-Z0-9_]+, or name an overridable built-in.
    prefix = "invalid .substitutions field: "
    if len(substitutions) > _MAX_SUBSTITUTIONS:
        raise InvalidBuild(f"{prefix}number of substitutions {len(substitutions)} exceeded (max: {_MAX_SUBSTITUTIONS})")
    for key, value in sorted(substitutions.items()):
        if len(key) > _MAX_KEY:
            raise InvalidBuild(f"{prefix}substitution key {_q(key)} too long (max: {_MAX_KEY})")
        if not USER_KEY.match(key) and key not in BUILTINS_OF_TRIGGERS:
            raise InvalidBuild(
                f"{prefix}substitution key {_q(key)} does not respect format {_q(USER_KEY.pattern)} "
                "and is not an overridable built-in substitutions"
            )
        if len(value) > _MAX_VALUE:
            raise InvalidBuild(f"{prefix}substitution value {_q(value)} too long (max: {_MAX_VALUE})")


def _check_artifacts(build: cloudbuild.Build) -> None:
    # validate.go CheckArtifacts.
    prefix = "invalid .artifacts field: "
    if build.images and build.artifacts.images and list(build.artifacts.images) != list(build.images):
        raise InvalidBuild(f"{prefix}cannot specify different .images and .artifacts.images")
    images = list(build.images or build.artifacts.images)
    if len(images) > _MAX_IMAGES:
        raise InvalidBuild(f"{prefix}cannot specify more than {_MAX_IMAGES} images to build")
    for index, image in enumerate(images):
        if len(image) > _MAX_IMAGE:
            raise InvalidBuild(f"{prefix}image {index} too long (max: {_MAX_IMAGE})")
    if "objects" not in build.artifacts:
        return
    objects = build.artifacts.objects
    if not objects.location:
        raise InvalidBuild(f"{prefix}.artifacts.location field is empty")
    if not objects.location.startswith("gs://"):
        raise InvalidBuild(
            f"{prefix}invalid .artifacts.location value {_q(objects.location)}; "
            "Google Cloud Storage URLs must begin with 'gs://'"
        )
    if not objects.paths:
        raise InvalidBuild(f"{prefix}.artifacts.paths field empty")
    if len(objects.paths) > _MAX_ARTIFACT_PATHS:
        raise InvalidBuild(
            f"{prefix}.artifacts.paths field has length {len(objects.paths)}, "
            f"but cannot specify more than {_MAX_ARTIFACT_PATHS}"
        )
    duplicates = [path for index, path in enumerate(objects.paths) if path in objects.paths[:index]]
    for path in objects.paths:
        if any(character.isspace() for character in path):
            raise InvalidBuild(f"{prefix}.artifacts.paths {_q(path)} contains whitespace")
    if duplicates:
        raise InvalidBuild(
            f"{prefix}.artifacts.paths field has duplicate paths; remove duplicates [{', '.join(duplicates)}]"
        )


def _check_steps(build: cloudbuild.Build) -> None:
    """validate.go CheckBuildSteps; cloudbuild.proto BuildStep.id ("Unique identifier ... used in wait_for")."""
    prefix = "invalid .steps field: "
    steps = build.steps
    if not steps:
        raise InvalidBuild(f"{prefix}no build steps are specified")
    if len(steps) > _MAX_STEPS:
        raise InvalidBuild(f"{prefix}cannot specify more than {_MAX_STEPS} build steps")
    build_timeout = build.timeout if "timeout" in build and build.timeout > timedelta(0) else MAX_TIMEOUT
    known = {START_STEP}
    for index, step in enumerate(steps):
        if not step.name:
            raise InvalidBuild(f"{prefix}build step {index} must specify name")
        if len(step.name) > _MAX_STEP_NAME:
            raise InvalidBuild(f"{prefix}build step {index} name too long (max: {_MAX_STEP_NAME})")
        if len(step.args) > _MAX_ARGS:
            raise InvalidBuild(f"{prefix}build step {index} too many args (max: {_MAX_ARGS})")
        for position, arg in enumerate(step.args):
            if len(arg) > _MAX_ARG:
                raise InvalidBuild(f"{prefix}build step {index} arg {position} too long (max: {_MAX_ARG})")
        if len(step.dir_) > _MAX_DIR:
            raise InvalidBuild(f"{prefix}build step {index} dir too long (max: {_MAX_DIR})")
        for dependency in step.wait_for:
            if dependency not in known:
                named = f" - {_q(step.id)}" if step.id else ""
                raise InvalidBuild(
                    f"{prefix}build step #{index}{named} depends on {_q(dependency)}, which has not been defined"
                )
        if step.id:
            if step.id in known:
                raise InvalidBuild(f"{prefix}build step #{index} - {_q(step.id)}: the ID is not unique")
            known.add(step.id)
        for env in step.env:
            if "=" not in env:
                raise InvalidBuild(
                    f'{prefix}build step #{index} - {_q(step.id)}: the Env entry {_q(env)} must be of the form "KEY=VALUE"'
                )
        if "timeout" in step:
            if step.timeout > MAX_TIMEOUT:
                raise InvalidBuild(
                    f"{prefix}invalid .timeout in build step #{index}: build step timeout exceeds the timeout limit of 24h0m0s"
                )
            if step.timeout > build_timeout:
                raise InvalidBuild(
                    f"{prefix}invalid .timeout in build step #{index}: build step timeout must be <= build timeout"
                )
            if step.timeout < timedelta(0):
                raise InvalidBuild(f"{prefix}invalid .timeout in build step #{index}: build step timeout must be >0")


def _template(build: cloudbuild.Build) -> Iterator[str]:
    """The fields Cloud Build checks substitutions against (validate.go CheckSubstitutionTemplate)."""
    for step in build.steps:
        yield step.name
        yield from step.args
        yield from step.env
        yield step.dir_
        yield step.entrypoint
    yield from build.images
    yield from build.tags
    if "objects" in build.artifacts:
        yield build.artifacts.objects.location
        yield from build.artifacts.objects.paths


def _check_template(build: cloudbuild.Build) -> None:
    """MUST_MATCH (the default, cloudbuild.proto BuildOptions.SubstitutionOption) refuses a `$_KEY` the build does
    not define and a substitution no field uses; ALLOW_LOOSE allows both. A `$KEY` that is neither a user key nor a
    built-in is refused either way (validate.go CheckSubstitutionTemplate)."""
    defined = build.substitutions
    used: set[str] = set()
    problems: list[str] = []
    for text in _template(build):
        for key in parameters(text):
            if key not in defined:
                if USER_KEY.match(key):
                    problems.append(
                        f"key in the template {_q(key)} is not matched in the substitution data; "
                        f"substitutions = {_go_map(defined)}"
                    )
                    continue
                if key not in BUILTINS_ALWAYS | BUILTINS_OF_TRIGGERS:
                    raise InvalidBuild(
                        f"invalid value for 'build.substitutions': key in the template {_q(key)} "
                        "is not a valid built-in substitution"
                    )
            used.add(key)
    problems += [
        f"key {_q(key)} in the substitution data is not matched in the template"
        for key in sorted(defined)
        if key not in used
    ]
    if problems and build.options.substitution_option != Options.SubstitutionOption.ALLOW_LOOSE:
        raise InvalidBuild(";".join(problems))


def _check_env(build: cloudbuild.Build) -> None:
    # validate.go checkEnvVars.
    if len(build.options.env) > _MAX_ENVS:
        raise InvalidBuild(f"invalid .options.env field: too many envs (max: {_MAX_ENVS})")
    for index, env in enumerate(build.options.env):
        if len(env) > _MAX_ENV:
            raise InvalidBuild(f"invalid .options.env field: env {index} too long (max: {_MAX_ENV})")
    for index, step in enumerate(build.steps):
        if len(step.env) > _MAX_ENVS or any(len(env) > _MAX_ENV for env in step.env):
            raise InvalidBuild(f"invalid .steps.env field: build step {index} {_MAX_ENVS}")


def _check_service_account(build: cloudbuild.Build) -> None:
    """A user-specified service account needs logs that are not in the default bucket (see SERVICE_ACCOUNT_NEEDS_LOGS)."""
    if not build.service_account:
        return
    if not _SERVICE_ACCOUNT.match(build.service_account):
        # The format is the proto's; this wording is the stand-in's own.
        raise InvalidBuild(
            f"invalid value for 'build.service_account': {_q(build.service_account)} "
            "must be of the format projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}"
        )
    options = build.options
    if (
        build.logs_bucket
        or options.logging in _LOGGING_WITHOUT_DEFAULT_BUCKET
        or options.default_logs_bucket_behavior == Options.DefaultLogsBucketBehavior.REGIONAL_USER_OWNED_BUCKET
    ):
        return
    raise InvalidBuild(SERVICE_ACCOUNT_NEEDS_LOGS)


def _check_after_substitutions(build: cloudbuild.Build, values: Mapping[str, str]) -> None:
    """validate.go CheckBuildAfterSubstitutions: step names and images are image references, tags match the tag regex."""
    for step in build.steps:
        name = substitute(step.name, values)
        if not IMAGE.match(name):
            raise InvalidBuild(f"invalid build: invalid build step name {_q(name)}")
    tags = [tag for tag in (substitute(tag, values) for tag in build.tags) if tag]  # empty ones are dropped
    if len(tags) > _MAX_TAGS:
        raise InvalidBuild(f"invalid build: number of tags {len(tags)} exceeded (max: {_MAX_TAGS})")
    for tag in tags:
        if not BUILD_TAG.match(tag):
            raise InvalidBuild(f"invalid build: invalid build tag {_q(tag)}: must match format {_q(BUILD_TAG.pattern)}")
    for requested in build.images:
        image = substitute(requested, values)
        if not IMAGE.match(image):
            if IMAGE.match(image.lower()):
                raise InvalidBuild(f"invalid build: invalid image name {_q(image)} contains uppercase letters")
            raise InvalidBuild(f"invalid build: invalid image name {_q(image)}")


def _q(text: str) -> str:
    """Go's %q for the strings these messages quote."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _go_map(values: Mapping[str, str]) -> str:
    """Go's %+v of a map[string]string (keys sorted), as the service prints the substitutions."""
    return "map[" + " ".join(f"{key}:{value}" for key, value in sorted(values.items())) + "]"
