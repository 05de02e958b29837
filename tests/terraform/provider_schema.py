"""The schemas of the google and google-beta providers, read offline from the jsii assemblies inside the PyPI
wheels cdktn-provider-google and cdktn-provider-google-beta.

The provider itself cannot be downloaded here, so `terraform validate` cannot run. The cdktn bindings embed
every resource's configuration as jsii structs: a property typed as another provider struct is a nested
block, any other property is an argument, and a property without ``optional`` is required. The docs of
each property link to the Terraform Registry anchor of its Terraform name (``...#retry_policy``).

Each wheel is downloaded once with pip and boiled down to a small JSON file in the cache directory
(``$CD4ML_CACHE_DIR``, default ``~/.cache/cd4ml``); nothing of it is committed. Both wheels of one cdktn
release embed the same provider version (21.1.0: hashicorp/google and hashicorp/google-beta 8.7.0).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The pinned bindings of each provider (its local name in versions.tf); their README names the provider
#: version they were generated from.
PACKAGES = {"google": "cdktn-provider-google", "google-beta": "cdktn-provider-google-beta"}
PACKAGE = PACKAGES["google"]
PACKAGE_VERSION = "21.1.0"
#: Bumped when the layout of the boiled-down JSON changes.
_FORMAT = 1
_KINDS = {"resources": "resource", "data-sources": "data", "ephemeral-resources": "ephemeral", None: "provider"}


@dataclass(frozen=True)
class Field:
    """One argument or nested block of a block."""

    required: bool
    block: str | None  # the struct of a nested block; None for an argument


@dataclass(frozen=True)
class Block:
    """The arguments and nested blocks one block may carry."""

    fields: Mapping[str, Field]

    @property
    def required(self) -> frozenset[str]:
        return frozenset(name for name, f in self.fields.items() if f.required)


@dataclass(frozen=True)
class ProviderSchema:
    """Every resource, data source and the provider block of the google provider, by Terraform name."""

    provider_version: str
    package: str
    roots: Mapping[str, Mapping[str, str]]  # kind ("resource", "data", "provider") -> type -> struct
    structs: Mapping[str, Block]

    def root(self, kind: str, type_name: str) -> Block | None:
        """The top-level block of ``resource "TYPE"``, ``data "TYPE"`` or ``provider "google"``; None if unknown."""
        struct = self.roots.get(kind, {}).get(type_name)
        return None if struct is None else self.structs[struct]

    def nested(self, field: Field) -> Block:
        assert field.block is not None
        return self.structs[field.block]


def cache_dir() -> Path:
    """Where downloaded and derived files are kept between runs."""
    explicit = os.environ.get("CD4ML_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cd4ml"


@functools.cache
def load(version: str = PACKAGE_VERSION, provider: str = "google") -> ProviderSchema:
    """The schema of ``provider`` (google or google-beta) from the pinned bindings, fetched and boiled down on first use."""
    package = PACKAGES[provider]
    target = cache_dir() / "terraform" / f"google-schema-{package}-{version}-f{_FORMAT}.json"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        compact = _compact(_read_assembly(_wheel(package, version)), provider, package)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(compact, sort_keys=True))
        tmp.replace(target)
    raw = json.loads(target.read_text())
    return ProviderSchema(
        provider_version=raw["provider_version"],
        package=raw["package"],
        roots=raw["roots"],
        structs={
            fqn: Block({n: Field(required=f["required"], block=f.get("block")) for n, f in s.items()})
            for fqn, s in raw["structs"].items()
        },
    )


def _wheel(package: str, version: str) -> Path:
    """The wheel in the cache, fetched with pip (the ordinary client) when absent."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(wheels),
                f"{package}=={version}",
            ],
            check=True,
        )
        found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download left no wheel of {package}=={version} in {wheels}")
    return found[-1]


def _read_assembly(wheel: Path) -> dict[str, Any]:
    """The jsii assembly: a ``.jsii`` file in the tarball the wheel ships, possibly a gzip redirect."""
    with zipfile.ZipFile(wheel) as zf:
        tgz_name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        with tempfile.TemporaryDirectory() as tmp:
            tgz = Path(zf.extract(tgz_name, tmp))
            with tarfile.open(tgz) as tar:

                def member(name: str) -> bytes:
                    handle = tar.extractfile(f"package/{name}")
                    if handle is None:
                        raise FileNotFoundError(name)
                    return handle.read()

                assembly: dict[str, Any] = json.loads(member(".jsii"))
                if assembly.get("schema") == "jsii/file-redirect":
                    data = member(assembly["filename"])
                    if assembly.get("compression") == "gzip":
                        data = gzip.decompress(data)
                    assembly = json.loads(data)
    return assembly


def _struct_refs(type_ref: Mapping[str, Any], assembly: str) -> Iterator[str]:
    """The provider structs a jsii type reference mentions (directly, in a union or a collection)."""
    if "fqn" in type_ref and type_ref["fqn"].startswith(assembly + "."):
        yield type_ref["fqn"]
    for member in type_ref.get("union", {}).get("types", []):
        yield from _struct_refs(member, assembly)
    if "collection" in type_ref:
        yield from _struct_refs(type_ref["collection"]["elementtype"], assembly)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _compact(assembly: Mapping[str, Any], provider: str, package: str) -> dict[str, Any]:
    """Keep what the check needs: Terraform names, required flags, and which properties are blocks."""
    prefix = f"@cdktn/provider-{provider}"  # the jsii assembly of cdktn-provider-<provider>
    registry = r"\{@link https://registry\.terraform\.io/providers/hashicorp/" + re.escape(provider)
    represents = re.compile(
        registry + r"/(?P<version>[^/]+)/docs"
        r"(?:/(?P<kind>resources|data-sources|ephemeral-resources)/\S+)? (?P<name>[\w-]+)\}"
    )
    anchor_re = re.compile(registry + r"/[^\s#]+#(\w+) ")
    types: Mapping[str, Any] = assembly["types"]
    structs = {fqn: t for fqn, t in types.items() if t.get("datatype") and fqn.startswith(prefix + ".")}
    roots: dict[str, dict[str, str]] = {"resource": {}, "data": {}, "ephemeral": {}, "provider": {}}
    version = ""
    for t in types.values():
        if t.get("kind") != "class" or not str(t.get("base", "")).startswith("cdktn.Terraform"):
            continue
        match = represents.search(t.get("docs", {}).get("summary", ""))
        params = t.get("initializer", {}).get("parameters", [])
        config = next((p["type"]["fqn"] for p in params if p["name"] == "config" and "fqn" in p["type"]), None)
        if match is None or config is None:
            continue
        roots[_KINDS[match["kind"]]][match["name"]] = config
        version = match["version"]
    compact_structs: dict[str, dict[str, dict[str, Any]]] = {}
    for fqn, t in structs.items():
        fields: dict[str, dict[str, Any]] = {}
        for prop in t.get("properties", []):
            docs = prop.get("docs", {})
            anchor = anchor_re.search(docs.get("remarks", "") + " " + docs.get("summary", ""))
            name = anchor.group(1) if anchor else _snake(prop["name"])
            refs = [r for r in _struct_refs(prop["type"], prefix) if r in structs]
            field: dict[str, Any] = {"required": not prop.get("optional", False)}
            if refs:
                field["block"] = refs[0]
            fields[name] = field
        compact_structs[fqn] = fields
    return {
        "provider_version": version,
        "package": f"{package}=={assembly['version']}",
        "roots": roots,
        "structs": compact_structs,
    }


if __name__ == "__main__":
    for name in PACKAGES:
        schema = load(provider=name)
        print(
            f"{schema.package}: hashicorp/{name} {schema.provider_version}, "
            f"{len(schema.roots['resource'])} resources, {len(schema.roots['data'])} data sources"
        )
