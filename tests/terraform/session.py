"""The body of `nox -s terraform`: every check of terraform/, offline (the providers cannot be downloaded).

1. ``terraform fmt -check``;  2. ``terraform init``, ``validate`` and ``plan`` of the root module with
terraform/example.tfvars, against stand-ins of the google, google-beta and archive providers that serve the
real schemas (tests/terraform/provider: read from the cdktn bindings, planned with computed attributes
unknown);  3. checkov, from its own virtualenv (it ships a fork of python-hcl2 under the same import name);
4. the pytest suite of tests/terraform (planted mistakes Terraform must refuse, parity with the catalog and
the local stack, IAM, creation order).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

#: Pinned tools; the providers' schema pins are tests.terraform.provider.schema.PACKAGES.
PYTHON_HCL2 = "python-hcl2==8.1.4"
CHECKOV = "checkov==3.3.30"
#: The stand-in providers: gRPC, protoc (compiles tfplugin6.proto at start-up) and cty's msgpack values.
STAND_IN = ("grpcio==1.85.4", "grpcio-tools==1.85.1", "msgpack==1.2.4")
TEST_DEPS = ("pytest>=8", "pyyaml>=6", "jsonschema>=4.20", "croniter>=2")
MODULE = "terraform"


def terraform(session: nox.Session) -> None:
    """Check terraform/ offline: fmt, validate + plan against the stand-in providers, checkov, the pytest suite."""
    quiet_tf = {"TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}
    session.run("terraform", "fmt", "-check", "-recursive", "-diff", f"{MODULE}/", external=True, env=quiet_tf)

    session.install(PYTHON_HCL2, *STAND_IN, *TEST_DEPS)
    # cd4ml and local_emulator are imported from the tree: installing the project would pull the Google clients.
    env = {**quiet_tf, "PYTHONPATH": os.pathsep.join(["functions", "."])}
    session.run("python", "-m", "tests.terraform.provider.plan", MODULE, env=env)

    checkov = _checkov(session)
    session.run(
        str(checkov),
        "--framework",
        "terraform",
        "--skip-download",
        "--compact",
        "--quiet",
        "-d",
        f"{MODULE}/",
        external=True,
    )

    session.run("python", "-m", "pytest", "tests/terraform", "-p", "no:cacheprovider", *session.posargs, env=env)


def _checkov(session: nox.Session) -> Path:
    """checkov in a virtualenv of its own under nox's cache, made once per pinned version."""
    venv = Path(session.cache_dir) / f"venv-{CHECKOV.replace('==', '-')}"
    binary = venv / ("Scripts" if sys.platform == "win32" else "bin") / "checkov"
    if not binary.exists():
        session.run("python", "-m", "venv", "--clear", str(venv))
        session.run(str(binary.parent / "python"), "-m", "pip", "install", "--quiet", CHECKOV, external=True)
    return binary
