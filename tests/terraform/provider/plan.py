"""`terraform init`, `validate` and `plan` of a root module, offline, against the stand-in providers.

Terraform installs the stand-ins from a ``filesystem_mirror`` laid out as
``registry.terraform.io/hashicorp/NAME/VERSION/OS_ARCH/terraform-provider-NAME_vVERSION`` (each a small
launcher of ``python -m tests.terraform.provider NAME``), named by a CLI configuration file that
``TF_CLI_CONFIG_FILE`` points to; ``dev_overrides`` would not do, since ``init`` still asks the registry then.
Everything lives in a temporary directory: the mirror, the CLI configuration, and a copy of the module (with
the repository's other folders linked beside it, so ``../functions`` and ``../examples`` resolve as they do
for terraform/), so no ``.terraform`` nor lock file is left in terraform/.

Usage: ``python -m tests.terraform.provider.plan [MODULE] [--var-file FILE]`` (default terraform/ with
terraform/example.tfvars); exits 1 with Terraform's own message when init, validate or plan fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import schema, server

REPO = Path(__file__).resolve().parents[3]
MODULE = REPO / "terraform"
EXAMPLE_VARS = MODULE / "example.tfvars"
#: What is not copied with a module: Terraform's own working files and build output.
_SKIPPED = {".terraform", ".terraform.lock.hcl", ".build", "terraform.tfstate", "terraform.tfstate.backup"}
_TIMEOUT = 300


@dataclass(frozen=True)
class Step:
    """One terraform command and what it said."""

    command: str  # "init", "validate", "plan"
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True)
class Result:
    """The steps run, up to the first that failed."""

    steps: tuple[Step, ...]

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def failed(self) -> Step | None:
        return next((step for step in self.steps if not step.ok), None)

    @property
    def output(self) -> str:
        return "\n".join(f"$ terraform {s.command}\n{s.output}" for s in self.steps)


def terraform_binary() -> str:
    found = shutil.which("terraform")
    if found is None:
        raise FileNotFoundError("terraform is not on PATH: install Terraform 1.9+ (CI uses 1.11)")
    return found


def _platform(terraform: str) -> str:
    done = subprocess.run([terraform, "version", "-json"], capture_output=True, text=True, check=True, env=_quiet())
    platform: str = json.loads(done.stdout)["platform"]
    return platform


def _quiet() -> dict[str, str]:
    return {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"}


def _mirror(root: Path, platform: str) -> Path:
    """The filesystem mirror of every stand-in provider at the version its bindings embed."""
    mirror = root / "mirror"
    pb, _services = server.protocol()
    for name in schema.PACKAGES:
        version = schema.load(name)["version"]
        server.schema_response(pb, name)  # built here once, not by each provider process Terraform starts
        folder = mirror / "registry.terraform.io" / "hashicorp" / name / version / platform
        folder.mkdir(parents=True)
        launcher = folder / f"terraform-provider-{name}_v{version}"
        launcher.write_text(
            "#!/bin/sh\n"
            f"export PYTHONPATH={_sh(str(REPO))}\n"
            f"export CD4ML_CACHE_DIR={_sh(str(schema.cache_dir()))}\n"
            f"exec {_sh(sys.executable)} -m tests.terraform.provider {name}\n"
        )
        launcher.chmod(0o755)
    return mirror


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _copy(module: Path, root: Path) -> Path:
    """``module`` copied to ``root/<its name>``, beside links to the repository's other top-level folders."""
    target = root / module.name
    shutil.copytree(module, target, ignore=lambda _dir, names: [n for n in names if n in _SKIPPED])
    for sibling in REPO.iterdir():
        if sibling.name != module.name and not sibling.name.startswith(".") and not (root / sibling.name).exists():
            (root / sibling.name).symlink_to(sibling)
    return target


@contextmanager
def workspace(module: Path = MODULE) -> Iterator[tuple[Path, dict[str, str]]]:
    """A scratch copy of ``module`` and the environment that makes Terraform use the stand-ins."""
    terraform = terraform_binary()
    with tempfile.TemporaryDirectory(prefix="cd4ml-tfplan-") as tmp:
        root = Path(tmp)
        mirror = _mirror(root / "providers", _platform(terraform))
        config = root / "providers" / "terraformrc"
        config.write_text(
            "provider_installation {\n"
            f"  filesystem_mirror {{\n    path    = {json.dumps(str(mirror))}\n"
            '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
        )
        env = {
            **_quiet(),
            "TF_CLI_CONFIG_FILE": str(config),
            "TF_DISABLE_PLUGIN_TLS": "1",  # the stand-ins serve plaintext gRPC on 127.0.0.1
            "TF_INPUT": "0",
        }
        for name in ("TF_DATA_DIR", "TF_PLUGIN_CACHE_DIR", "TF_WORKSPACE", "TF_LOG"):
            env.pop(name, None)
        yield _copy(module, root / "repo"), env


def run(module: Path = MODULE, var_file: Path | None = EXAMPLE_VARS, extra: Sequence[str] = ()) -> Result:
    """init, validate, then plan ``module`` (a copy of it) with ``var_file``; stops at the first failure."""
    terraform = terraform_binary()
    steps: list[Step] = []
    with workspace(module) as (work, env):
        commands: list[tuple[str, list[str]]] = [
            ("init", ["init", "-input=false", "-no-color"]),
            ("validate", ["validate", "-no-color"]),
            (
                "plan",
                [
                    "plan",
                    "-input=false",
                    "-no-color",
                    "-lock=false",
                    *([f"-var-file={var_file.resolve()}"] if var_file is not None else []),
                    *extra,
                ],
            ),
        ]
        for command, args in commands:
            done = subprocess.run(
                [terraform, *args], cwd=work, env=env, capture_output=True, text=True, timeout=_TIMEOUT
            )
            steps.append(Step(command, done.returncode, (done.stdout + done.stderr).strip()))
            if done.returncode != 0:
                break
    return Result(tuple(steps))


def _summary(result: Result) -> str:
    plan = result.steps[-1].output if result.steps else ""
    line = next((ln for ln in plan.splitlines() if ln.startswith(("Plan:", "No changes."))), "")
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("module", nargs="?", type=Path, default=MODULE)
    parser.add_argument("--var-file", type=Path, default=None, help="default: MODULE/example.tfvars")
    args = parser.parse_args(argv)
    module: Path = args.module.resolve()
    var_file: Path | None = args.var_file or (module / "example.tfvars")
    if var_file is not None and not var_file.exists():
        print(f"{var_file} is missing: give every variable without a default in it, or pass --var-file")
        return 2
    result = run(module, var_file)
    failed = result.failed
    if failed is not None:
        print(failed.output)
        hint = ""
        if failed.command == "init":
            served = ", ".join(f"hashicorp/{n}" for n in schema.PACKAGES)
            hint = (
                f" (stand-ins exist for {served} only: for another provider, add its cdktn-provider package to "
                "tests/terraform/provider/schema.py PACKAGES)"
            )
        print(f"terraform {failed.command} failed on {module} (offline, stand-in providers): see above{hint}")
        return 1
    versions = ", ".join(f"hashicorp/{n} {schema.load(n)['version']}" for n in schema.PACKAGES)
    print(f"terraform validate and plan of {module.name}/ pass offline against {versions}: {_summary(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
