"""What the stand-in provider does to values: plan computed attributes as unknown, read data sources as known
placeholders, and refuse a value set on a read-only attribute.

Values travel as cty's msgpack encoding (github.com/zclconf/go-cty, ``cty/msgpack``): an object is a map by
attribute name with every attribute present (null when unset), a list or set an array, an unknown value the
extension type 0 (12 when Terraform adds refinements), and a value of a ``dynamic`` attribute a pair
``[type JSON, value]``. A block is walked by its schema (``schema.load``'s shape); what is not walked is passed
through byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import msgpack

#: cty's msgpack extension codes of an unknown value: plain, and with refinements (Terraform 1.6+).
UNKNOWN_CODES = (0, 12)
UNKNOWN = msgpack.ExtType(0, b"\x00")


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode(value: Any) -> bytes:
    encoded: bytes = msgpack.packb(value, use_bin_type=True)
    return encoded


def is_unknown(value: Any) -> bool:
    return isinstance(value, msgpack.ExtType) and value.code in UNKNOWN_CODES


def plan(block: Mapping[str, Any], proposed: Any) -> Any:
    """The planned new state of a resource: the proposed state (config merged with prior state by Terraform), each
    computed attribute still null made unknown, as a provider that learns it only on apply does."""
    return _walk(block, proposed, lambda _name, _type: UNKNOWN)


def read(block: Mapping[str, Any], config: Any, label: str) -> Any:
    """The state of a data source: its configuration, each computed attribute still null given a known placeholder
    of its type (Terraform requires a data source's result to be wholly known)."""
    return _walk(block, config, lambda name, kind: placeholder(kind, f"{label}.{name}"))


def placeholder(kind: Any, label: str) -> Any:
    """A known value of cty type ``kind``: a string names where it came from; collections are empty."""
    if kind == "string":
        return f"stand-in:{label}"
    if kind == "number":
        return 0
    if kind == "bool":
        return False
    if kind == "dynamic":
        return None
    if isinstance(kind, list) and kind[0] in ("list", "set", "tuple"):
        return []
    if isinstance(kind, list) and kind[0] == "map":
        return {}
    if isinstance(kind, list) and kind[0] == "object":
        return {name: placeholder(t, f"{label}.{name}") for name, t in kind[1].items()}
    raise ValueError(f"no placeholder for cty type {kind!r}")


def _walk(block: Mapping[str, Any], value: Any, fill: Any) -> Any:
    if not isinstance(value, dict):
        return value  # null (a block being destroyed, an absent single block) or unknown: nothing to fill
    out = dict(value)
    for name, spec in block.get("attributes", {}).items():
        if spec.get("computed") and out.get(name) is None:
            out[name] = fill(name, spec["type"])
    for name, nested in block.get("block_types", {}).items():
        inner = nested["block"]
        current = out.get(name)
        if nested["nesting_mode"] == "single":
            out[name] = _walk(inner, current, fill)
        elif isinstance(current, list):
            out[name] = [_walk(inner, element, fill) for element in current]
        elif isinstance(current, dict):
            out[name] = {key: _walk(inner, element, fill) for key, element in current.items()}
    return out


def read_only_set(
    block: Mapping[str, Any], config: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[str | int, ...]]:
    """Each path where the configuration sets an attribute the provider computes alone (computed, not optional):
    the provider refuses those (terraform-plugin-sdk: "this field cannot be set")."""
    if not isinstance(config, dict):
        return
    for name, spec in block.get("attributes", {}).items():
        read_only = spec.get("computed") and not spec.get("optional") and not spec.get("required")
        if read_only and config.get(name) is not None:
            yield (*path, name)
    for name, nested in block.get("block_types", {}).items():
        current = config.get(name)
        if nested["nesting_mode"] == "single":
            yield from read_only_set(nested["block"], current, (*path, name))
        elif isinstance(current, list):
            for i, element in enumerate(current):
                yield from read_only_set(nested["block"], element, (*path, name, i))
