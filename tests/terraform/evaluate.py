"""Evaluate the module's provider-free locals (catalog.tf) with the real `terraform console`, offline.

catalog.tf holds only locals derived from the catalog, the schemas, the manifests and iam_bindings.yaml, so
Terraform can evaluate it without the google provider: the file is copied with variables.tf into a scratch
module whose ``..`` links to the repository's functions/ and examples/, exactly as terraform/ sees them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "terraform"
#: The files of the module that declare no resource and need no provider.
PROVIDER_FREE = ("catalog.tf", "variables.tf")
#: Values for the variables without a default.
EXAMPLE_VARIABLES = {"project_id": "cd4ml-example", "spinnaker_gate_url": "https://gate.example.com"}


class TerraformError(RuntimeError):
    """`terraform console` refused the expression; the message is Terraform's."""


def terraform_binary() -> str:
    found = shutil.which("terraform")
    if found is None:
        raise FileNotFoundError("terraform is not on PATH (Terraform 1.9+ is needed to evaluate catalog.tf)")
    return found


def evaluate(
    expressions: Mapping[str, str],
    variables: Mapping[str, str] | None = None,
    module: Path = MODULE,
) -> dict[str, Any]:
    """Each named HCL expression evaluated in the provider-free part of ``module`` (terraform/ or a copy of it)."""
    values = {**EXAMPLE_VARIABLES, **(variables or {})}
    with tempfile.TemporaryDirectory(prefix="cd4ml-tf-") as tmp:
        root = Path(tmp)
        scratch = root / "terraform"
        scratch.mkdir()
        for sibling in REPO.iterdir():  # the repository beside the module, also for a scratch copy of it
            if sibling.name != MODULE.name and not sibling.name.startswith("."):
                (root / sibling.name).symlink_to(sibling)
        for name in PROVIDER_FREE:
            shutil.copy(module / name, scratch / name)
        shutil.copy(module / "iam_bindings.yaml", scratch / "iam_bindings.yaml")
        body = ", ".join(f"{json.dumps(k)} = {v}" for k, v in expressions.items())
        args = [terraform_binary(), "console", *(f"-var={k}={v}" for k, v in values.items())]
        env = {**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "TF_IN_AUTOMATION": "1"}
        done = subprocess.run(
            args, input=f"jsonencode({{{body}}})\n", capture_output=True, text=True, cwd=scratch, env=env, timeout=60
        )
    if done.returncode != 0:
        raise TerraformError(done.stderr.strip() or done.stdout.strip())
    result: dict[str, Any] = json.loads(json.loads(done.stdout))
    return result
