"""Terraform files as python-hcl2 sees them: blocks are lists of dicts marked ``__is_block__``."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

_OPTIONS = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)
#: Keys python-hcl2 adds to a block's body that are not Terraform's.
MARKERS = frozenset({"__is_block__", "__comments__", "__inline_comments__", "__start_line__", "__end_line__"})
#: Top-level block kinds whose first label is a provider's type.
TYPED_KINDS = ("resource", "data", "ephemeral")


@dataclass(frozen=True)
class TopBlock:
    """One top-level block: ``resource "TYPE" "NAME" {...}``, ``data ...``, ``provider "NAME" {...}``, ..."""

    file: Path
    line: int
    kind: str
    labels: tuple[str, ...]
    body: Mapping[str, Any]

    @property
    def address(self) -> str:
        if self.kind == "resource":
            return ".".join(self.labels)
        return ".".join((self.kind, *self.labels))

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.kind} {' '.join(self.labels)}".rstrip()


def is_block(value: Any) -> bool:
    """True when ``value`` is how python-hcl2 renders one or more nested blocks."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and v.get("__is_block__") for v in value)


def body_items(body: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The arguments and nested blocks of a block body, without python-hcl2's markers."""
    return ((k, v) for k, v in body.items() if k not in MARKERS)


@functools.cache
def _parse(path: Path, mtime_ns: int) -> dict[str, Any]:
    del mtime_ns  # part of the cache key only
    result: dict[str, Any] = hcl2.loads(path.read_text(), serialization_options=_OPTIONS)
    return result


def parse(path: Path) -> dict[str, Any]:
    """The file as a dict; cached per modification time so several tests share one parse."""
    return _parse(path, path.stat().st_mtime_ns)


def _line_of(text: str, kind: str, labels: tuple[str, ...]) -> int:
    pattern = r"^\s*" + re.escape(kind) + "".join(r'\s+"?' + re.escape(label) + r'"?' for label in labels) + r"\s*\{"
    match = re.search(pattern, text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else 1


def top_blocks(directory: Path) -> list[TopBlock]:
    """Every top-level block of every ``*.tf`` file directly in ``directory`` (a root module)."""
    blocks: list[TopBlock] = []
    for path in sorted(directory.glob("*.tf")):
        text = path.read_text()
        for kind, entries in parse(path).items():
            for entry in entries if isinstance(entries, list) else [entries]:
                blocks.extend(_flatten(path, text, kind, (), entry))
    return blocks


def _flatten(path: Path, text: str, kind: str, labels: tuple[str, ...], entry: Any) -> Iterator[TopBlock]:
    """Walk the label levels python-hcl2 nests (``{"TYPE": {"NAME": {body}}}``) down to each body."""
    if not isinstance(entry, dict):
        return
    if entry.get("__is_block__") or kind in ("locals", "terraform") or not entry:
        yield TopBlock(path, _line_of(text, kind, labels), kind, labels, entry)
        return
    for label, inner in entry.items():
        if label in MARKERS:
            continue
        yield from _flatten(path, text, kind, (*labels, label), inner)


def locals_map(directory: Path) -> dict[str, Any]:
    """Every ``locals`` entry of the module, as python-hcl2 renders its expression."""
    merged: dict[str, Any] = {}
    for block in top_blocks(directory):
        if block.kind == "locals":
            merged.update(body_items(block.body))
    return merged
