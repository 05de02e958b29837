"""The module's dependency graph, as Terraform builds it, read with python-hcl2 (no provider needed).

Terraform orders a resource after everything its body references, directly or through locals, and after
everything in its ``depends_on``. Its graph is one node per resource or data block (all instances of a
``for_each`` together) and one per local. Terraform itself refuses a cycle (`terraform validate`, run offline by
tests/terraform/provider); this graph serves the ordering rules Terraform cannot know (test_ordering.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import hcl

_KINDS = ("resource", "data")


def _address(block: hcl.TopBlock) -> str:
    return ".".join(block.labels) if block.kind == "resource" else ".".join(("data", *block.labels))


def _mentions(text: str, address: str) -> bool:
    return re.search(r"(?<![\w.-])" + re.escape(address) + r"(?![\w-])", text) is not None


def dependencies(directory: Path) -> dict[str, set[str]]:
    """Node -> the nodes it refers to directly (in its body or its ``depends_on``); nodes are
    ``TYPE.NAME``, ``data.TYPE.NAME`` and ``local.NAME``."""
    bodies: dict[str, str] = {}
    for block in hcl.top_blocks(directory):
        if block.kind in _KINDS:
            bodies[_address(block)] = json.dumps(dict(hcl.body_items(block.body)))
    for name, value in hcl.locals_map(directory).items():
        bodies[f"local.{name}"] = json.dumps(value)
    return {
        node: {other for other in bodies if other != node and _mentions(text, other)} for node, text in bodies.items()
    }


def direct_depends_on(directory: Path, address: str) -> list[str]:
    """The entries of a resource's ``depends_on``, in order."""
    for block in hcl.top_blocks(directory):
        if block.kind in _KINDS and _address(block) == address:
            return [str(e).removeprefix("${").removesuffix("}") for e in block.body.get("depends_on", [])]
    raise KeyError(address)
