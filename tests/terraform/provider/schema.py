"""A provider's Terraform schema (attribute types, computed flags, block nesting) read offline from its cdktn wheel.

The prebuilt CDK Terrain bindings (PyPI ``cdktn-provider-NAME``) are generated from the provider's own
``terraform providers schema -json`` and keep all of it in their JavaScript (``package/lib/*/index.js`` of
the jsii tarball the wheel ships):

- every attribute of a resource, data source or nested object has a getter preceded by
  ``// NAME - computed: C, optional: O, required: R``; its body names its type
  (``getStringAttribute``, ``getNumberAttribute``, ``getBooleanAttribute``, ``getListAttribute``,
  ``getNumberListAttribute``, ``getStringMapAttribute``; wrapped in ``Fn.tolist`` for a set);
- a nested object is ``new XList(this, "NAME", WRAPS_SET)`` (a list, or a set) or
  ``new XOutputReference(this, "NAME")`` (at most one); a computed-only one is an attribute of type
  ``list(object(...))``, any other one a block;
- ``synthesizeHclAttributes`` / ``xToHclTerraform`` say how each configurable name is written: its
  ``isBlock``, its nesting (``type: "list" | "set" | "struct"``) and, for the provider block, its type.

What is lost: a block's exact ``min_items`` / ``max_items`` beyond "required" (1) and "at most one" (1), the
attributes' validators (enum values, formats), and for the provider block's nested blocks, which of their
arguments are required (all are taken as optional). Everything Terraform itself checks in ``validate`` and
``plan`` (names, types, nesting, required, computed) is kept. A pattern this reader does not know fails the
extraction instead of producing a looser schema.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Each stand-in provider: its registry type, the cdktn package and version whose bindings embed its schema.
#: google and google-beta 8.7.0 are embedded by cdktn 21.1.0; archive 2.8.1 by cdktn-provider-archive 14.0.1.
PACKAGES: Mapping[str, tuple[str, str]] = {
    "google": ("cdktn-provider-google", "21.1.0"),
    "google-beta": ("cdktn-provider-google-beta", "21.1.0"),
    "archive": ("cdktn-provider-archive", "14.0.1"),
}
#: Bumped when the layout of the cached JSON changes.
_FORMAT = 1

_MODULE_PREFIX = re.compile(r"new \w+_\d+\.")  # a class from a sibling file of the same folder
_CLASS = re.compile(r"^class (\w+) extends cdktn\.(\w+) \{$", re.MULTILINE)
_FUNCTION = re.compile(r"^function (\w+)ToHclTerraform\(struct\) \{$", re.MULTILINE)
_MEMBER = re.compile(r"^ {4}// (\w+) - computed: (true|false), optional: (true|false), required: (true|false)$", re.M)
_NESTED = re.compile(r'new (\w+?)(List|OutputReference|Map)\(this, "(\w+)"(?:, (true|false))?\)')
_GETTER = re.compile(r"return (cdktn\.Fn\.tolist\()?this\.(get\w+Attribute)\('(\w+)'\)")
_CDKTN_MAP = re.compile(r'new cdktn\.(String|Number|Boolean)Map(List)?\(this, "(\w+)"(?:, (true|false))?\)')
_PLAIN = re.compile(r"return this\._\w+;")
_SYNTH = re.compile(
    r'^\s+"?(\w+)"?: \{\s*value: [^\n]*\n\s*isBlock: (true|false),\n\s*type: "(\w+)",\n\s*storageClassType: "(\w+)",'
    r"\n\s*\}",
    re.MULTILINE,
)
_RESOURCE_TYPE = re.compile(r'static tfResourceType = "([\w-]+)";')
_VERSION = re.compile(r"providerVersion: '([^']+)'")
_GETTER_TYPES: Mapping[str, Any] = {
    "getStringAttribute": "string",
    "getNumberAttribute": "number",
    "getBooleanAttribute": "bool",
    "getListAttribute": ["list", "string"],
    "getNumberListAttribute": ["list", "number"],
    "getStringMapAttribute": ["map", "string"],
    "getNumberMapAttribute": ["map", "number"],
    "getBooleanMapAttribute": ["map", "bool"],
}
_STORAGE_TYPES: Mapping[str, Any] = {
    "string": "string",
    "number": "number",
    "boolean": "bool",
    "stringList": "string",
    "numberList": "number",
    "booleanList": "bool",
    "stringMap": "string",
    "numberMap": "number",
    "booleanMap": "bool",
}
_KINDS = {"TerraformResource": "resource", "TerraformDataSource": "data", "TerraformProvider": "provider"}


class SchemaError(RuntimeError):
    """The bindings hold a pattern this reader does not know: the schema would be incomplete."""


@dataclass(frozen=True)
class _Member:
    name: str
    computed: bool
    optional: bool
    required: bool
    text: str  # the lines of its getter


@dataclass(frozen=True)
class _Synth:
    is_block: bool
    kind: str  # "simple", "list", "set", "map", "struct"
    storage: str


def load(provider: str) -> dict[str, Any]:
    """The schema of ``provider`` as ``{"version", "provider", "resource", "data", "cut"}``, each block in the
    shape of ``terraform providers schema -json`` (``cut``: the members left out of a type, see ``_Reader``);
    extracted once from the pinned wheel and cached as JSON."""
    package, version = PACKAGES[provider]
    target = cache_path(provider)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        extracted = extract(wheel(package, version), provider)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")  # the cache is shared: each writer renames its own file
        tmp.write_text(json.dumps(extracted, sort_keys=True))
        tmp.replace(target)
    loaded: dict[str, Any] = json.loads(target.read_text())
    return loaded


def cache_dir() -> Path:
    """Where downloaded wheels and extracted schemas are kept between runs: ``$CD4ML_CACHE_DIR``, default
    ``~/.cache/cd4ml``."""
    explicit = os.environ.get("CD4ML_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cd4ml"


def wheel(package: str, version: str) -> Path:
    """The wheel of ``package==version`` in the cache, fetched with pip (the ordinary client) when absent."""
    wheels = cache_dir() / "wheels"
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    if not sorted(wheels.glob(pattern)):
        wheels.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        subprocess.run([*command, "--dest", str(wheels), f"{package}=={version}"], check=True)
    found = sorted(wheels.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download left no wheel of {package}=={version} in {wheels}")
    return found[-1]


def cache_path(provider: str) -> Path:
    """Where the extracted schema of ``provider`` is cached (JSON; files derived from it sit beside it)."""
    package, version = PACKAGES[provider]
    return cache_dir() / "terraform" / f"tf-schema-{package}-{version}-f{_FORMAT}.json"


def extract(wheel: Path, provider: str) -> dict[str, Any]:
    """Every resource, data source and the provider block of the bindings in ``wheel``."""
    result: dict[str, Any] = {"provider": None, "resource": {}, "data": {}, "version": "", "cut": {}}
    for text in _javascript(wheel):
        for kind, type_name, block, version, cut in _file_schemas(text):
            if kind == "provider":
                result["provider"] = block
                result["version"] = version
            else:
                result[kind][type_name] = block
            if cut:
                result["cut"][f"{kind} {type_name}"] = sorted(set(cut))
    if result["provider"] is None or (not result["resource"] and not result["data"]):
        raise SchemaError(f"{wheel.name}: no provider class or no resource found for {provider}")
    return result


def _javascript(wheel: Path) -> Iterator[str]:
    """The JavaScript of each ``lib/NAME/`` folder of the jsii tarball inside the wheel (``index.js`` and its
    ``index-structs/*.js``, joined), without source maps."""
    folders: dict[str, list[str]] = {}
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        with zf.open(name) as raw, tarfile.open(fileobj=io.BytesIO(raw.read()), mode="r:gz") as tar:
            for member in tar:
                folder = re.fullmatch(r"package/lib/([^/]+)/(?:[^/]+/)*[^/]+\.js", member.name)
                if member.isfile() and folder is not None:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    text = handle.read().decode()
                    cut = text.rfind("//# sourceMappingURL=")
                    folders.setdefault(folder[1], []).append(text[:cut] if cut >= 0 else text)
    for texts in folders.values():
        yield _MODULE_PREFIX.sub("new ", "\n".join(texts))


def _file_schemas(text: str) -> Iterator[tuple[str, str, dict[str, Any], str, list[str]]]:
    """(kind, Terraform type, block, provider version, cut paths) of each top-level class in one bindings file."""
    classes = _split(text, _CLASS)
    synths = {_lower(name): _synth(body) for name, body in _split(text, _FUNCTION).items()}
    for name, body in classes.items():
        base = _CLASS.search(body)
        kind = _KINDS.get(base.group(2) if base else "")
        if kind is None:
            continue
        found = _RESOURCE_TYPE.search(body)
        version = _VERSION.search(body)
        if found is None:
            raise SchemaError(f"class {name} has no tfResourceType")
        synths[_lower(name)] = _synth(body[body.find("synthesizeHclAttributes()") :])
        reader = _Reader(classes, synths)
        block = reader.block(name, kind == "provider")
        if kind == "provider":
            block["attributes"].pop("alias", None)  # a meta-argument of Terraform's, not the provider's
        yield kind, found.group(1), block, version.group(1) if version else "", reader.cut


def _split(text: str, header: re.Pattern[str]) -> dict[str, str]:
    """The top-level declarations matching ``header``, each up to the next top-level line, by name."""
    starts = [(m.group(1), m.start()) for m in header.finditer(text)]
    out: dict[str, str] = {}
    for name, start in starts:
        end = text.find("\n}\n", start)
        out[name] = text[start : end if end >= 0 else len(text)]
    return out


def _lower(name: str) -> str:
    return name[0].lower() + name[1:]


def _synth(body: str) -> dict[str, _Synth]:
    return {m[1]: _Synth(m[2] == "true", m[3], m[4]) for m in _SYNTH.finditer(body)}


def _members(body: str) -> Iterator[_Member]:
    matches = list(_MEMBER.finditer(body))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        yield _Member(m[1], m[2] == "true", m[3] == "true", m[4] == "true", body[m.end() : end])


class _Reader:
    """Builds the blocks of one bindings file. The bindings stop a deeply self-similar schema by reusing a
    class (cloud_security_compliance_cloud_control's ``oneof_value``): such a member is left out and its
    path recorded in ``cut``, so a configuration that uses it is refused, never silently accepted."""

    def __init__(self, classes: Mapping[str, str], synths: Mapping[str, dict[str, _Synth]]) -> None:
        self._classes = classes
        self._synths = synths
        self._stack: list[str] = []
        self.cut: list[str] = []

    def block(self, class_name: str, provider: bool = False) -> dict[str, Any]:
        """The block of the struct whose class is ``class_name`` (a resource, data source, provider or
        OutputReference)."""
        self._stack.append(class_name)
        try:
            return self._block(class_name, provider)
        finally:
            self._stack.pop()

    def _recursive(self, class_name: str, member: str) -> bool:
        if class_name in self._stack:
            self.cut.append(".".join([*self._stack[1:], member]))
            return True
        return False

    def _block(self, class_name: str, provider: bool) -> dict[str, Any]:
        struct = class_name.removesuffix("OutputReference")
        synth = self._synths.get(_lower(struct), {})
        body = self._classes.get(class_name)
        attributes: dict[str, Any] = {}
        block_types: dict[str, Any] = {}
        if body is not None:
            members = list(_members(body))
        elif synth:
            # A struct with no class of its own (the provider block's nested blocks): every argument optional.
            members = [_Member(name, False, True, False, "") for name in synth]
        else:
            raise SchemaError(f"no class nor synthesizer for {class_name}")
        for member in members:
            nested = _NESTED.search(member.text)
            flags = {k: True for k in ("computed", "optional", "required") if getattr(member, k)}
            written = synth.get(member.name)
            if nested is not None:
                element = nested[1] + "OutputReference"
                if nested[2] == "Map":
                    raise SchemaError(f"{class_name}.{member.name}: map-nested objects are not supported")
                if self._recursive(element, member.name):
                    continue
                if member.computed and not member.optional and not member.required:
                    collection = "set" if nested[4] == "true" else "list"
                    attributes[member.name] = {"type": [collection, self._object_type(element)], **flags}
                    continue
                if written is None or not written.is_block:
                    raise SchemaError(f"{class_name}.{member.name}: a configurable nested object that is not a block")
                spec = self._nested_block(written, element, member.required)
                if spec["nesting_mode"] != "single" and nested[2] == "OutputReference":
                    spec["max_items"] = 1
                block_types[member.name] = spec
            elif written is not None and written.is_block:
                element = written.storage.removesuffix("List") + "OutputReference"
                if not self._recursive(element, member.name):
                    block_types[member.name] = self._nested_block(written, element, member.required)
            else:
                attributes[member.name] = {"type": _attribute_type(class_name, member, written, provider), **flags}
        for name, written in synth.items():
            if name in attributes or name in block_types:
                continue
            if written.is_block:
                element = written.storage.removesuffix("List") + "OutputReference"
                if not self._recursive(element, name):
                    block_types[name] = self._nested_block(written, element, False)
            else:
                attributes[name] = {"type": _storage_type(class_name, name, written), "optional": True}
        return {"attributes": attributes, "block_types": block_types}

    def _nested_block(self, written: _Synth, element: str, required: bool) -> dict[str, Any]:
        nesting = {"list": "list", "set": "set", "struct": "single"}[written.kind]
        spec: dict[str, Any] = {"nesting_mode": nesting, "block": self.block(element)}
        if required and nesting != "single":
            spec["min_items"] = 1
        return spec

    def _object_type(self, class_name: str) -> Any:
        """The cty object type of a computed-only nested object (every member, nested ones recursively)."""
        body = self._classes.get(class_name)
        if body is None:
            raise SchemaError(f"no class {class_name}")
        self._stack.append(class_name)
        fields: dict[str, Any] = {}
        try:
            for member in _members(body):
                nested = _NESTED.search(member.text)
                if nested is None:
                    fields[member.name] = _attribute_type(class_name, member, None, False)
                elif not self._recursive(nested[1] + "OutputReference", member.name):
                    collection = "set" if nested[4] == "true" else "list"
                    fields[member.name] = [collection, self._object_type(nested[1] + "OutputReference")]
        finally:
            self._stack.pop()
        return ["object", fields]


def _attribute_type(class_name: str, member: _Member, written: _Synth | None, provider: bool) -> Any:
    cdktn_map = _CDKTN_MAP.search(member.text)
    if cdktn_map is not None:
        element = {"String": "string", "Number": "number", "Boolean": "bool"}[cdktn_map[1]]
        if cdktn_map[2]:
            return ["set" if cdktn_map[4] == "true" else "list", ["map", element]]
        return ["map", element]
    getter = _GETTER.search(member.text)
    if getter is not None:
        if getter[3] != member.name or getter[2] not in _GETTER_TYPES:
            raise SchemaError(f"{class_name}.{member.name}: unknown getter {getter[0]}")
        kind = _GETTER_TYPES[getter[2]]
        if getter[1]:
            if not isinstance(kind, list) or kind[0] != "list":
                raise SchemaError(f"{class_name}.{member.name}: Fn.tolist around {getter[2]}")
            return ["set", kind[1]]
        return kind
    if written is not None and (provider or not member.text or _PLAIN.search(member.text)):
        return _storage_type(class_name, member.name, written)
    raise SchemaError(f"{class_name}.{member.name}: no getter this reader knows")


def _storage_type(class_name: str, name: str, written: _Synth) -> Any:
    element = _STORAGE_TYPES.get(written.storage)
    if element is None:
        raise SchemaError(f"{class_name}.{name}: unknown storage class {written.storage}")
    if written.kind == "simple":
        return element
    return [written.kind, element]


if __name__ == "__main__":
    import sys

    for name in sys.argv[1:] or list(PACKAGES):
        schema = load(name)
        print(f"{name} {schema['version']}: {len(schema['resource'])} resources, {len(schema['data'])} data sources")
