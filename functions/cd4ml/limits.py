"""Pub/Sub's size limits, and texts bounded to a size that keep their reason whole (the quoted value is cut instead).

Limits: https://cloud.google.com/pubsub/quotas#resource_limits ("Message size (the data field): 10 MB"; "Publish
request: 10 MB total size"; "Attributes per message: 100"; "Attribute key size: 256 bytes"; "Attribute value size:
1024 bytes"). Pub/Sub counts 10 MB as 10,485,760 bytes (its refusal names that figure, apache/beam#23022).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

MAX_REQUEST_BYTES = 10 * 1024 * 1024
MAX_ATTRIBUTES = 100
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024
#: What a publish request holds besides the data and the attributes (topic name, protobuf framing): kept free.
REQUEST_OVERHEAD_BYTES = 4096

#: A quoted value as ``repr`` and jsonschema write it ('…' or "…", escapes inside); an apostrophe inside a word
#: ("Pub/Sub's") opens nothing. Written as
#: an unrolled loop: one alternative per character took 20 s over an 11 MB value.
_QUOTED = re.compile(r"""(?<![\w'"])('[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*")(?!\w)""")
#: Bytes of a quoted value kept before the cut.
_KEPT = 32


def bounded(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, its reason kept whole: the longest quoted values are cut first,
    each saying how many bytes were cut (``'AAAA…' (699968 bytes cut)``); only what still does not fit is cut at
    the end, marked ``…``.

    A long value used to push the reason out: "model: '😀😀…" said which field, not what was wrong with it.
    """
    if len(text.encode()) <= limit:
        return text
    excess = len(text.encode()) - limit
    spans = sorted(_QUOTED.finditer(text), key=lambda m: len(m.group().encode()), reverse=True)
    replacements: dict[int, tuple[int, str]] = {}
    for match in spans:
        if excess <= 0:
            break
        short = _cut_quoted(match.group(), excess)
        if short is not None:
            replacements[match.start()] = (match.end(), short)
            excess -= len(match.group().encode()) - len(short.encode())
    for start in sorted(replacements, reverse=True):
        end, short = replacements[start]
        text = text[:start] + short + text[end:]
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: max(0, limit - 3)].decode(errors="ignore") + "…"


def _cut_quoted(quoted: str, excess: int) -> str | None:
    """``quoted`` shortened by at least ``excess`` bytes where it can be (never below its first bytes), or None
    when cutting saves nothing."""
    quote, inner = quoted[0], quoted[1:-1].encode()
    keep, short = len(inner), quoted
    while True:
        keep = max(_KEPT, keep - (excess - (len(quoted.encode()) - len(short.encode()))))
        head = inner[:keep].decode(errors="ignore")
        short = f"{quote}{head}…{quote} ({len(inner) - len(head.encode())} bytes cut)"
        saved = len(quoted.encode()) - len(short.encode())
        if saved >= excess or keep == _KEPT:
            return short if saved > 0 else None


def attribute_bytes(attributes: Mapping[str, str]) -> int:
    """The bytes of the attributes' keys and values, as a publish request carries them."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())


def room_for_data(attributes: Mapping[str, str], topic: str) -> int:
    """The most data bytes a message with ``attributes`` can carry to ``topic`` in one publish request."""
    return MAX_REQUEST_BYTES - REQUEST_OVERHEAD_BYTES - attribute_bytes(attributes) - len(topic.encode())
