"""Check every resource, data source and provider block of a root module against the google provider schema.

What `terraform validate` would say about argument names, if the provider could be downloaded: unknown
arguments or blocks, a nested block written as an argument (``retry_policy = {...}``) or the reverse, and
missing required arguments or blocks. Values are not checked. Usage: ``python -m tests.terraform.schema_check DIR``.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hcl, provider_schema
from .provider_schema import Block, ProviderSchema

#: Blocks of other providers, checked by nobody here: (kind, type) -> why that is acceptable.
NOT_GOOGLE = {
    ("data", "archive_file"): "hashicorp/archive zips functions/ locally; it has three arguments and no API",
}
#: Meta-arguments Terraform itself accepts on every resource / data block (arguments, then blocks).
_META_ARGUMENTS = {
    "resource": ({"count", "for_each", "depends_on", "provider"}, {"lifecycle", "provisioner", "connection"}),
    "data": ({"count", "for_each", "depends_on", "provider"}, {"lifecycle"}),
    "ephemeral": ({"count", "for_each", "depends_on", "provider"}, {"lifecycle"}),
    "provider": ({"alias", "version"}, set()),
}


@dataclass(frozen=True)
class Problem:
    """One place where the module disagrees with the provider schema."""

    where: str  # "terraform/pubsub.tf:12: resource google_pubsub_subscription stage"
    path: str  # dotted path inside the block, e.g. "push_config.oidc_token.audience"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else f"{self.where}: {self.message}"


def check_module(directory: Path, schema: ProviderSchema | None = None) -> list[Problem]:
    """Every problem in the ``*.tf`` files of ``directory``, all at once."""
    schema = schema or provider_schema.load()
    problems: list[Problem] = []
    for block in hcl.top_blocks(directory):
        if block.kind not in _META_ARGUMENTS:
            continue
        type_name = block.labels[0] if block.labels else ""
        if (block.kind, type_name) in NOT_GOOGLE:
            continue
        root = schema.root(block.kind, type_name)
        if root is None:
            problems.append(
                Problem(
                    block.where(),
                    "",
                    f"unknown {block.kind} type {type_name!r} in hashicorp/google "
                    f"{schema.provider_version} (non-google blocks need an entry in NOT_GOOGLE)",
                )
            )
            continue
        meta_args, meta_blocks = _META_ARGUMENTS[block.kind]
        problems.extend(
            Problem(block.where(), path, message)
            for path, message in _check_body(schema, root, block.body, "", meta_args, meta_blocks)
        )
    return problems


_REFERENCE = re.compile(r"(?<![\w.])(local|var|data\.[a-z0-9_]+|google_[a-z0-9_]+)\.([A-Za-z_][\w-]*)")
_COMMENT = re.compile(r"^\s*(#|//).*$", re.MULTILINE)


def check_references(directory: Path) -> list[Problem]:
    """References to locals, variables, resources and data sources that the module does not declare."""
    declared: set[tuple[str, str]] = set()
    for block in hcl.top_blocks(directory):
        if block.kind == "locals":
            declared.update(("local", name) for name, _ in hcl.body_items(block.body))
        elif block.kind == "variable":
            declared.add(("var", block.labels[0]))
        elif block.kind == "resource":
            declared.add((block.labels[0], block.labels[1]))
        elif block.kind == "data":
            declared.add((f"data.{block.labels[0]}", block.labels[1]))
    problems = []
    for path in sorted(directory.glob("*.tf")):
        text = _COMMENT.sub("", path.read_text())
        for match in _REFERENCE.finditer(text):
            if (match[1], match[2]) not in declared:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(Problem(f"{path}:{line}", "", f"reference to undeclared {match[1]}.{match[2]}"))
    return problems


def _check_body(
    schema: ProviderSchema,
    spec: Block,
    body: Mapping[str, Any],
    prefix: str,
    meta_args: set[str] | frozenset[str] = frozenset(),
    meta_blocks: set[str] | frozenset[str] = frozenset(),
) -> Iterator[tuple[str, str]]:
    present: set[str] = set()
    for name, value in hcl.body_items(body):
        if name == "dynamic" and isinstance(value, list):
            for entry in value:
                for block_name, dyn in hcl.body_items(entry):
                    present.add(block_name)
                    yield from _check_dynamic(schema, spec, block_name, dyn, prefix)
            continue
        present.add(name)
        path = prefix + name
        if name in meta_args:
            continue
        if name in meta_blocks:
            if not hcl.is_block(value):
                yield path, f"{name!r} is a block: write `{name} {{ ... }}`, not `{name} = ...`"
            continue
        field = spec.fields.get(name)
        if field is None:
            kind = "block" if hcl.is_block(value) else "argument"
            yield path, f"unknown {kind} {name!r}{_suggest(name, spec)}"
        elif field.block is None and hcl.is_block(value):
            yield path, f"{name!r} is an argument: write `{name} = ...`, not a `{name} {{ ... }}` block"
        elif field.block is not None and not hcl.is_block(value):
            yield path, f"{name!r} is a block: write `{name} {{ ... }}`, not `{name} = ...`"
        elif field.block is not None:
            for entry in value:
                yield from _check_body(schema, schema.nested(field), entry, path + ".")
    for name in sorted(spec.required - present):
        kind = "block" if spec.fields[name].block else "argument"
        yield prefix + name, f"missing required {kind} {name!r}"


def _check_dynamic(schema: ProviderSchema, spec: Block, name: str, dyn: Any, prefix: str) -> Iterator[tuple[str, str]]:
    path = prefix + name
    field = spec.fields.get(name)
    if field is None:
        yield path, f"unknown block {name!r} in `dynamic {name!r}`{_suggest(name, spec)}"
        return
    if field.block is None:
        yield path, f"{name!r} is an argument and cannot be generated with `dynamic`"
        return
    contents = dyn.get("content") if isinstance(dyn, dict) else None
    if not isinstance(contents, list) or not hcl.is_block(contents):
        yield path, f"`dynamic {name!r}` needs a `content {{ ... }}` block"
        return
    for entry in contents:
        yield from _check_body(schema, schema.nested(field), entry, path + ".")


def _suggest(name: str, spec: Block) -> str:
    close = difflib.get_close_matches(name, list(spec.fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def main(argv: list[str]) -> int:
    directory = Path(argv[0] if argv else "terraform")
    schema = provider_schema.load()
    problems = check_module(directory, schema) + check_references(directory)
    for problem in problems:
        print(problem)
    checked = sum(1 for b in hcl.top_blocks(directory) if b.kind in _META_ARGUMENTS)
    print(
        f"{checked} blocks checked against hashicorp/google {schema.provider_version} "
        f"({schema.package}): {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
