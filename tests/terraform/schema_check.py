"""Check every resource, data source and provider block of a root module against the google provider schemas.

What `terraform validate` would say about argument names, if the providers could be downloaded: unknown
arguments or blocks, a nested block written as an argument (``retry_policy = {...}``) or the reverse, and
missing required arguments or blocks. A block with ``provider = google-beta`` (and ``provider "google-beta"``)
is checked against the google-beta schema, every other one against google's: a beta-only resource without
``provider = google-beta`` is an unknown type, as Terraform would find it. ``lifecycle`` (preconditions,
postconditions) and ``removed`` blocks are checked against Terraform's own syntax, and a ``removed`` block may
not name a resource still declared. Values are not checked. Usage: ``python -m tests.terraform.schema_check DIR``.
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
from .provider_schema import Block, Field, ProviderSchema

#: Blocks of other providers, checked by nobody here: (kind, type) -> why that is acceptable.
NOT_GOOGLE = {
    ("data", "archive_file"): "hashicorp/archive zips functions/ locally; it has three arguments and no API",
}
#: Meta-arguments Terraform itself accepts on every resource / data block (arguments, then blocks not checked).
_META_ARGUMENTS = {
    "resource": ({"count", "for_each", "depends_on", "provider"}, {"provisioner", "connection"}),
    "data": ({"count", "for_each", "depends_on", "provider"}, set()),
    "ephemeral": ({"count", "for_each", "depends_on", "provider"}, set()),
    "provider": ({"alias", "version"}, set()),
}
#: The providers whose schemas are checked, by their local names in versions.tf.
PROVIDERS = tuple(provider_schema.PACKAGES)

# Terraform's own blocks, as structs of the same shape as the providers' (developer.hashicorp.com/terraform/
# language/meta-arguments/lifecycle, .../language/resources/syntax#removing-resources).
_OWN = "terraform."
_ARG, _REQUIRED_ARG = Field(required=False, block=None), Field(required=True, block=None)
_CONDITION = Block({"condition": _REQUIRED_ARG, "error_message": _REQUIRED_ARG})
_TERRAFORM_STRUCTS: dict[str, Block] = {
    _OWN + "condition": _CONDITION,
    _OWN + "lifecycle.resource": Block(
        {
            "create_before_destroy": _ARG,
            "prevent_destroy": _ARG,
            "ignore_changes": _ARG,
            "replace_triggered_by": _ARG,
            "precondition": Field(required=False, block=_OWN + "condition"),
            "postcondition": Field(required=False, block=_OWN + "condition"),
        }
    ),
    _OWN + "lifecycle.data": Block(
        {
            "precondition": Field(required=False, block=_OWN + "condition"),
            "postcondition": Field(required=False, block=_OWN + "condition"),
        }
    ),
    _OWN + "lifecycle.removed": Block({"destroy": _ARG}),
    _OWN + "removed": Block(
        {"from": _REQUIRED_ARG, "lifecycle": Field(required=False, block=_OWN + "lifecycle.removed")}
    ),
}
_LIFECYCLE = {"resource": "lifecycle.resource", "data": "lifecycle.data", "ephemeral": "lifecycle.data"}


@dataclass(frozen=True)
class Problem:
    """One place where the module disagrees with the provider schema."""

    where: str  # "terraform/pubsub.tf:12: resource google_pubsub_subscription stage"
    path: str  # dotted path inside the block, e.g. "push_config.oidc_token.audience"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}" if self.path else f"{self.where}: {self.message}"


def provider_of(block: hcl.TopBlock) -> str:
    """The local name of the provider a block belongs to: its ``provider`` meta-argument, else its type's prefix."""
    if block.kind == "provider":
        return block.labels[0]
    explicit = block.body.get("provider")
    if isinstance(explicit, str):
        return explicit.removeprefix("${").removesuffix("}").split(".")[0]
    type_name = block.labels[0] if block.labels else ""
    return type_name.split("_")[0]


class _Schemas:
    """The provider schemas by local name, each loaded when first needed, with Terraform's own blocks added."""

    def __init__(self, given: ProviderSchema | None) -> None:
        self._loaded: dict[str, ProviderSchema] = {}
        if given is not None:
            self._loaded["google"] = given

    def get(self, provider: str) -> ProviderSchema | None:
        if provider not in PROVIDERS:
            return None
        if provider not in self._loaded:
            self._loaded[provider] = provider_schema.load(provider=provider)
        schema = self._loaded[provider]
        if _OWN + "condition" not in schema.structs:
            schema = ProviderSchema(
                schema.provider_version, schema.package, schema.roots, {**schema.structs, **_TERRAFORM_STRUCTS}
            )
            self._loaded[provider] = schema
        return schema


def check_module(directory: Path, schema: ProviderSchema | None = None) -> list[Problem]:
    """Every problem in the ``*.tf`` files of ``directory``, all at once (``schema``: google's, if already loaded)."""
    schemas = _Schemas(schema)
    blocks = hcl.top_blocks(directory)
    declared = {".".join(b.labels) for b in blocks if b.kind == "resource"}
    problems: list[Problem] = []
    for block in blocks:
        if block.kind == "removed":
            problems.extend(_check_removed(schemas, block, declared))
            continue
        if block.kind not in _META_ARGUMENTS:
            continue
        type_name = block.labels[0] if block.labels else ""
        if (block.kind, type_name) in NOT_GOOGLE:
            continue
        provider = provider_of(block)
        found = schemas.get(provider)
        if found is None:
            problems.append(
                Problem(block.where(), "provider", f"unknown provider {provider!r}: not one of {PROVIDERS}")
            )
            continue
        root = found.root(block.kind, type_name)
        if root is None:
            problems.append(
                Problem(
                    block.where(),
                    "",
                    f"unknown {block.kind} type {type_name!r} in hashicorp/{provider} "
                    f"{found.provider_version} (a beta-only type needs `provider = google-beta`; "
                    "non-google blocks need an entry in NOT_GOOGLE)",
                )
            )
            continue
        if block.kind in _LIFECYCLE:
            root = Block({**root.fields, "lifecycle": Field(required=False, block=_OWN + _LIFECYCLE[block.kind])})
        meta_args, meta_blocks = _META_ARGUMENTS[block.kind]
        problems.extend(
            Problem(block.where(), path, message)
            for path, message in _check_body(found, root, block.body, "", meta_args, meta_blocks)
        )
    return problems


def _check_removed(schemas: _Schemas, block: hcl.TopBlock, declared: set[str]) -> Iterator[Problem]:
    """A ``removed`` block: Terraform's syntax, and its ``from`` no longer declared (Terraform refuses both)."""
    own = schemas.get("google")
    assert own is not None
    spec = own.structs[_OWN + "removed"]
    for path, message in _check_body(own, spec, block.body, "", frozenset(), {"provisioner", "connection"}):
        yield Problem(block.where(), path, message)
    target = str(block.body.get("from", "")).removeprefix("${").removesuffix("}")
    if target in declared:
        yield Problem(block.where(), "from", f"{target} is still declared: remove its resource block, or this block")


_REFERENCE = re.compile(r"(?<![\w.])(local|var|data\.[a-z0-9_]+|google_[a-z0-9_]+)\.([A-Za-z_][\w-]*)")
_COMMENT = re.compile(r"^\s*(#|//).*$", re.MULTILINE)


#: `removed` and `moved` blocks name resources that are, by design, no longer (or not yet) declared.
_ADDRESS_BLOCKS = re.compile(r"^(removed|moved)\s*\{.*?^\}", re.MULTILINE | re.DOTALL)


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
        text = _ADDRESS_BLOCKS.sub(lambda m: "\n" * m[0].count("\n"), text)
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
    blocks = [b for b in hcl.top_blocks(directory) if b.kind in _META_ARGUMENTS or b.kind == "removed"]
    beta = sum(1 for b in blocks if b.kind != "removed" and provider_of(b) == "google-beta")
    print(
        f"{len(blocks)} blocks checked against hashicorp/google {schema.provider_version} ({schema.package}), "
        f"{beta} of them (provider = google-beta) against hashicorp/google-beta: {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
