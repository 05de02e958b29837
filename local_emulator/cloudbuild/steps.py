"""Pure parts of the local Cloud Build: substitutions, the docker builder's arguments, ListBuilds filters."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: Builder images whose `build`, `tag` and `push` commands the local Cloud Build runs with buildah/skopeo.
DOCKER_BUILDERS = frozenset({"gcr.io/cloud-builders/docker", "docker", "docker.io/library/docker"})

# A template parameter as Cloud Build finds it: `$$` (an escaped `$`), `${KEY}` or `$KEY`, KEY upper case only
# (GoogleCloudPlatform/cloud-build-local subst/subst.go, FindTemplateParameters; `$foo` stays literal).
_PARAMETER = re.compile(r"\$(?:(\$)|\{([A-Z_][A-Z0-9_]*)\}|([A-Z_][A-Z0-9_]*))")

# docker build flags: passed on to buildah bud, or accepted and ignored (never pull, one platform); --no-cache turns
# off the reuse of unchanged layers across builds (the stand-in's layer cache, see DockerBuild.cache).
_PASSED_WITH_VALUE = {
    "--build-arg": "--build-arg",
    "--label": "--label",
    "--target": "--target",
    "--add-host": "--add-host",
}
_IGNORED_WITH_VALUE = frozenset(
    {"--platform", "--network", "--cache-from", "--progress", "--iidfile", "--memory", "--shm-size"}
)
_IGNORED_SWITCHES = frozenset({"--no-cache", "--pull", "-q", "--quiet", "--rm", "--force-rm", "--compress"})


class StepError(ValueError):
    """A build step the local Cloud Build cannot run; the message becomes the build's failure detail."""


def parameters(text: str) -> list[str]:
    """The substitution keys a template string uses, in order (`$$` escapes are not keys)."""
    return [match.group(2) or match.group(3) for match in _PARAMETER.finditer(text) if not match.group(1)]


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Apply substitutions as Cloud Build does: `$$` → `$`, `$KEY`/`${KEY}` → its value, or "" when undefined.

    An undefined key becomes the empty string (subst.go, SubstituteBuildFields; the docs: "occurrences of the
    missing variable are replaced with an empty string"); validation refuses such keys first unless ALLOW_LOOSE.
    """

    def _one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        return values.get(match.group(2) or match.group(3), "")

    return _PARAMETER.sub(_one, text)


def builder_name(step_name: str) -> str:
    """A builder image without its tag or digest, e.g. gcr.io/cloud-builders/docker."""
    name = step_name.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    return name


@dataclass(frozen=True)
class DockerBuild:
    """`docker build` arguments, resolved: tags, Dockerfile, context, and flags for buildah bud."""

    tags: tuple[str, ...]
    dockerfile: str | None
    context: str
    options: tuple[str, ...]
    #: Reuse the layers of an earlier build whose instruction and inputs were the same (buildah --layers). Cloud Build
    #: builds every layer on a fresh worker unless the build asks `--cache-from`; the image is the same either way,
    #: only a local build is faster (the serving image's `pip install` layer: ~1 min per build). `--no-cache`: off.
    cache: bool = True


@dataclass(frozen=True)
class DockerTag:
    """`docker tag SOURCE TARGET`."""

    source: str
    target: str


@dataclass(frozen=True)
class DockerPush:
    """`docker push IMAGE`."""

    image: str


@dataclass(frozen=True)
class Mount:
    """`-v HOST:CONTAINER[:ro|rw]`: a host directory (an absolute path) bound into the container."""

    host: str
    container: str
    read_only: bool = False


@dataclass(frozen=True)
class DockerRun:
    """`docker run` of the subset the local Cloud Build runs: one container to its end, on a named network."""

    image: str
    args: tuple[str, ...]
    network: str
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    workdir: str = ""
    mounts: tuple[Mount, ...] = ()


DockerCommand = DockerBuild | DockerTag | DockerPush | DockerRun

#: `docker run` networks the local Cloud Build gives a container (the local network module models both).
RUN_NETWORKS = frozenset({"none", "cloudbuild"})
_RUN_WITH_VALUE = frozenset({"--network", "--net", "-v", "--volume", "-w", "--workdir", "--entrypoint", "-e", "--env"})
_RUN_IGNORED_WITH_VALUE = frozenset({"--name"})
_RUN_IGNORED_SWITCHES = frozenset({"--rm"})
# docker run flags Docker knows that the local Cloud Build does not model: refused by name, not as unknown.
_RUN_UNSUPPORTED = frozenset(
    {
        "-d",
        "--detach",
        "-i",
        "--interactive",
        "-t",
        "--tty",
        "-p",
        "--publish",
        "-P",
        "--publish-all",
        "-u",
        "--user",
        "--privileged",
        "--add-host",
        "--dns",
        "--mount",
        "--volumes-from",
        "--link",
        "--cap-add",
        "--pid",
        "--ipc",
        "--env-file",
        "--read-only",
        "--tmpfs",
        "--platform",
        "--pull",
        "-h",
        "--hostname",
        "--init",
        "--expose",
    }
)
#: A named volume's name, as Docker checks it (daemon/names: RestrictedNamePattern).
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def _split_flag(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        flag, value = arg.split("=", 1)
        return flag, value
    return arg, None


def parse_docker_build(args: Sequence[str]) -> DockerBuild:
    """Read `docker build` arguments (without the leading "build"); raise StepError on what is not supported."""
    tags: list[str] = []
    dockerfile: str | None = None
    options: list[str] = []
    positional: list[str] = []
    cache = True
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        flag, value = _split_flag(arg)
        takes_value = (
            flag in {"-t", "--tag", "-f", "--file"} or flag in _PASSED_WITH_VALUE or flag in _IGNORED_WITH_VALUE
        )
        if takes_value and value is None:
            if index >= len(args):
                raise StepError(f"docker build flag {flag} needs a value")
            value = args[index]
            index += 1
        if flag in {"-t", "--tag"}:
            tags.append(str(value))
        elif flag in {"-f", "--file"}:
            dockerfile = value
        elif flag in _PASSED_WITH_VALUE:
            options += [_PASSED_WITH_VALUE[flag], str(value)]
        elif flag == "--no-cache":
            cache = False
        elif flag in _IGNORED_WITH_VALUE or flag in _IGNORED_SWITCHES:
            continue
        else:
            raise StepError(f"docker build flag {flag} is not supported by the local Cloud Build")
    if len(positional) != 1:
        raise StepError(f"docker build needs exactly one context path, got {positional or 'none'}")
    return DockerBuild(tuple(tags), dockerfile, positional[0], tuple(options), cache)


def _mount(spec: str) -> Mount:
    """`-v` as Docker reads it: HOST:CONTAINER[:MODE]; Docker's words for what it refuses."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise StepError(f"docker: invalid spec: {spec}: only HOST:CONTAINER[:ro|rw] bind mounts are supported here")
    host, container, mode = parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"
    if not host.startswith("/"):
        if not _VOLUME_NAME.match(host):
            raise StepError(
                f'docker: Error response from daemon: create {host}: "{host}" includes invalid characters for a local '
                'volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
                "use absolute path"
            )
        raise StepError(
            f"named volume {host!r} of docker run is not supported by the local Cloud Build (bind mounts are)"
        )
    if not container.startswith("/"):
        raise StepError(
            f"docker: Error response from daemon: invalid volume specification: '{spec}': "
            f"invalid mount config for type \"bind\": invalid mount path: '{container}' mount path must be absolute"
        )
    if mode not in ("ro", "rw"):
        raise StepError(f"mount mode {mode!r} of docker run is not supported by the local Cloud Build (ro, rw are)")
    return Mount(host, container, mode == "ro")


def parse_docker_run(args: Sequence[str]) -> DockerRun:
    """Read `docker run` arguments (without the leading "run"): flags, then IMAGE, then the container's arguments.

    Docker refuses an unknown flag, no image, a relative mount path or working directory, an invalid volume name
    (its own words here). Networks: `none` (loopback only) and `cloudbuild` (the build's network, with the metadata
    server); Docker's default bridge and the others are not modelled, so a run without `--network` is refused.
    """
    network = ""
    entrypoint: str | None = None
    env: list[str] = []
    workdir = ""
    mounts: list[Mount] = []
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "-":
        flag, value = _split_flag(args[index])
        index += 1
        if flag == "--":
            break
        if flag in _RUN_WITH_VALUE or flag in _RUN_IGNORED_WITH_VALUE:
            if value is None:
                if index >= len(args):
                    raise StepError(f"docker: flag needs an argument: {flag}")
                value = args[index]
                index += 1
        elif value is not None and flag in _RUN_IGNORED_SWITCHES and value not in ("true", "false"):
            raise StepError(f'docker: invalid argument "{value}" for "{flag}" flag')
        if flag in ("--network", "--net"):
            network = str(value)
        elif flag in ("-v", "--volume"):
            mounts.append(_mount(str(value)))
        elif flag in ("-w", "--workdir"):
            if not str(value).startswith("/"):
                raise StepError(
                    "docker: Error response from daemon: the working directory "
                    f"'{value}' is invalid, it needs to be an absolute path"
                )
            workdir = str(value)
        elif flag == "--entrypoint":
            entrypoint = str(value)
        elif flag in ("-e", "--env"):
            if "=" not in str(value):
                raise StepError(
                    f"docker run -e {value} (taken from the step's environment) is not supported by the "
                    "local Cloud Build: give NAME=VALUE"
                )
            env.append(str(value))
        elif flag in _RUN_IGNORED_WITH_VALUE or flag in _RUN_IGNORED_SWITCHES:
            continue
        elif flag in _RUN_UNSUPPORTED:
            raise StepError(f"docker run flag {flag} is not supported by the local Cloud Build")
        else:
            raise StepError(f"docker: unknown flag: {flag}")
    if index >= len(args):
        raise StepError('docker: "docker run" requires at least 1 argument.')
    if network not in RUN_NETWORKS:
        raise StepError(
            f"docker run {'--network=' + network if network else 'without --network (the default bridge)'} is not "
            "supported by the local Cloud Build: give --network=none (loopback only) or --network=cloudbuild"
        )
    return DockerRun(args[index], tuple(args[index + 1 :]), network, entrypoint, tuple(env), workdir, tuple(mounts))


def parse_docker_step(name: str, entrypoint: str, args: Sequence[str]) -> DockerCommand:
    """Turn one step of the docker builder into a command; raise StepError for anything else."""
    if builder_name(name) not in DOCKER_BUILDERS:
        raise StepError(
            f"builder {name!r} is not supported by the local Cloud Build (only gcr.io/cloud-builders/docker)"
        )
    if entrypoint and entrypoint != "docker":
        raise StepError(f"entrypoint {entrypoint!r} is not supported by the local Cloud Build")
    if not args:
        raise StepError("docker step without arguments")
    command, rest = args[0], list(args[1:])
    if command in {"build", "buildx"}:
        if command == "buildx":
            if not rest or rest[0] != "build":
                raise StepError("only `docker buildx build` is supported")
            rest = rest[1:]
        return parse_docker_build(rest)
    if command == "tag" and len(rest) == 2:
        return DockerTag(rest[0], rest[1])
    if command == "push" and len(rest) == 1:
        return DockerPush(rest[0])
    if command == "run":
        return parse_docker_run(rest)
    raise StepError(f"`docker {' '.join(args)}` is not supported by the local Cloud Build (build, tag, push, run are)")


BuildFields = Mapping[str, object]
Predicate = Callable[[BuildFields], bool]

_TERM = re.compile(
    r'^\s*(tags|status|id|images|build_id|trigger_id|project_id)\s*(=|:)\s*("(?:[^"\\]|\\.)*"|[^\s()"]+)\s*$'
)


def parse_filter(expression: str) -> Predicate:
    """Compile the subset of ListBuilds' filter syntax used by callers: `field="v"` terms joined by AND.

    Supported fields: tags, status, id (build_id), images, trigger_id, project_id. A repeated field
    (tags, images) matches when any element equals the value, as in the real API.
    """
    if not expression.strip():
        return lambda _fields: True
    terms: list[tuple[str, str]] = []
    for raw in re.split(r"\s+AND\s+", expression.strip()):
        match = _TERM.match(raw)
        if match is None:
            raise ValueError(f"unsupported filter term {raw.strip()!r}")
        field, _, value = match.groups()
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        terms.append(({"build_id": "id"}.get(field, field), value))

    def _matches(fields: BuildFields) -> bool:
        for field, value in terms:
            actual = fields.get(field)
            if isinstance(actual, (list, tuple)):
                if value not in actual:
                    return False
            elif actual != value:
                return False
        return True

    return _matches
