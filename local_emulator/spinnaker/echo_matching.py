"""Echo's matching rules, ported from its Java: payload constraints, JsonPath reads, expected artifacts.

Sources (spinnaker/echo and spinnaker/kork, master of April 2025):
- echo-pipelinetriggers/.../artifacts/ArtifactMatcher.java: `isConstraintInPayload`,
  `isJsonPathConstraintInPayload`, `anyArtifactsMatchExpected`.
- kork-artifacts/.../model/ExpectedArtifact.java: `matches` (full-regex or equal fields, base64 types).
- JsonPath results were checked against json-path 2.10.0 + json-smart 2.6.0 + Gson, as Echo configures
  them (`Configuration.defaultConfiguration().setOptions(SUPPRESS_EXCEPTIONS)`, payload via `gson.toJson`).

Java facts this module reproduces: a constraint value and a payload value are compared through Java's
`toString` (`[a, b]` for a list, `{k=v}` for a map, `1.0` for a double), so a JSON-list constraint is ONE
regex (a character class); `Pattern.asPredicate()` is a substring search (`find`); an invalid regex never
matches. Where Echo's Java throws (a null constraint on a JsonPath hit, a non-string element in a JsonPath
list), the whole event triggers nothing: that is `EventDropped`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

EMBEDDED_BASE64 = "embedded/base64"  # kork ArtifactTypes.EMBEDDED_BASE64
REMOTE_BASE64 = "remote/base64"  # kork ArtifactTypes.REMOTE_BASE64
_ARTIFACT_FIELDS = ("name", "version", "location", "reference")  # ExpectedArtifact.matches, in order


class EventDropped(RuntimeError):
    """Echo's Java threw while matching: its EventPropagator logs it and the event starts nothing at all."""


class TriggerSkipped(RuntimeError):
    """Java threw while binding one trigger's artifacts: Echo logs it and skips just that trigger."""


class UnsupportedJsonPath(ValueError):
    """A JsonPath feature (filters, functions) this stand-in does not evaluate."""


# --- Java's toString ------------------------------------------------------------------------------------


def java_double(value: float) -> str:
    """`Double.toString`: plain between 1e-3 and 1e7, else computerized scientific (`1.0E20`, `1.0E-4`)."""
    if math.isnan(value) or math.isinf(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text.replace("e", ".0e")
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    return f"{'-' if sign else ''}{text[0]}.{text[1:] or '0'}E{len(text) - 1 + exponent}"


def java_string(value: Any) -> str:
    """What Java prints for a value Jackson read from JSON (`String.valueOf`): LinkedHashMap, ArrayList..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return java_double(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{java_string(k)}={java_string(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(java_string(item) for item in value) + "]"
    return str(value)


# --- java.util.regex ------------------------------------------------------------------------------------

_POSIX = {
    "Lower": "a-z", "Upper": "A-Z", "ASCII": "\\x00-\\x7f", "Alpha": "a-zA-Z", "Digit": "0-9",
    "Alnum": "a-zA-Z0-9", "Punct": "!-/:-@\\[-`{-~", "Graph": "!-~", "Print": " -~", "Blank": " \\t",
    "Cntrl": "\\x00-\\x1f\\x7f", "XDigit": "0-9a-fA-F", "Space": " \\t\\n\\x0b\\f\\r",
}  # fmt: skip
_QUANTIFIER = re.compile(r"\{\d+(,\d*)?\}")


def _translate(pattern: str) -> str:
    """A Java regex in Python's dialect; raises re.error where Java's Pattern.compile would fail."""
    out: list[str] = []
    i, in_class = 0, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == "Q":
                end = pattern.find("\\E", i + 2)
                literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
                out.append(re.escape(literal))
                i = len(pattern) if end < 0 else end + 2
                continue
            if nxt in "pP" and pattern[i + 2 : i + 3] == "{":
                end = pattern.index("}", i)
                name = pattern[i + 3 : end].removeprefix("Is")
                if name not in _POSIX:
                    raise re.error(f"unsupported Java property \\{nxt}{{{name}}} in the stand-in")
                body = _POSIX[name]
                out.append((f"[{'^' if nxt == 'P' else ''}{body}]") if not in_class else body)
                i = end + 1
                continue
            out.append({"z": "\\Z", "Z": "(?=\\n?\\Z)", "h": "[ \\t\\xa0\\u1680\\u180e\\u2000-\\u200a\\u202f\\u205f\\u3000]"}
                       .get(nxt, c + nxt))  # fmt: skip
            i += 2
            continue
        if in_class:
            if c == "[":
                raise re.error("nested character classes and && are not supported by the stand-in")
            in_class = 0 if c == "]" else in_class
            out.append(c)
        elif c == "[":
            in_class = 1
            out.append("[^" if pattern[i + 1 : i + 2] == "^" else "[")
            i += 2 if pattern[i + 1 : i + 2] == "^" else 1
            if pattern[i : i + 1] == "]":  # a leading ] is a literal in both dialects
                out.append("\\]")
                i += 1
            continue
        elif c == "{" and not _QUANTIFIER.match(pattern, i):
            raise re.error("Illegal repetition", pattern, i)  # Java refuses a `{` that is not a quantifier
        elif pattern.startswith("(?P", i):
            raise re.error("Unknown inline modifier", pattern, i)  # Python-only syntax
        elif pattern.startswith("(?<", i) and pattern[i + 3 : i + 4] not in ("=", "!"):
            out.append("(?P<")
            i += 3
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def java_pattern(pattern: str) -> re.Pattern[str]:
    """`Pattern.compile(pattern)`; raises re.error (Java's PatternSyntaxException) if Java would."""
    return re.compile(_translate(pattern))


def regex_find(pattern: str, text: str) -> bool:
    """ArtifactMatcher.matches: `Pattern.compile(us).asPredicate().test(other)`; an invalid regex is false."""
    try:
        return java_pattern(pattern).search(text) is not None
    except (re.error, ValueError):
        return False  # Echo logs "Invalid regex pattern for constraint, will never match any payload"


# --- JsonPath (jayway), as Echo reads it ----------------------------------------------------------------

_DOT_NAME = re.compile(r"[^.\[\]( ]+")


def _tokens(path: str) -> list[tuple[str, Any]]:
    """Jayway's PathCompiler for the subset Echo's users write: names, ['quoted'], [n], [*], .., slices."""
    path = path.strip()
    if not path:
        raise EventDropped("IllegalArgumentException: path can not be null or empty")
    if not path.startswith(("$", "@")):
        path = "$." + path  # PathCompiler prefixes a path that has no root
    i, tokens = 1, list[tuple[str, Any]]()
    while i < len(path):
        if path.startswith("..", i):
            tokens.append(("scan", None))
            i += 2
            if i < len(path) and path[i] == "[":
                continue
        elif path[i] == ".":
            i += 1
        elif path[i] != "[":
            raise UnsupportedJsonPath(f"invalid path at {i}: {path}")
        if i >= len(path):
            raise UnsupportedJsonPath("Path must not end with a '.' or '..'")
        if path[i] == "*":
            tokens.append(("wild", None))
            i += 1
        elif path[i] == "[":
            end = path.find("]", i)
            if end < 0:
                raise UnsupportedJsonPath("Property has not been closed - missing closing ]")
            tokens.append(_bracket(path[i + 1 : end].strip()))
            i = end + 1
        else:
            match = _DOT_NAME.match(path, i)
            if not match:
                raise UnsupportedJsonPath(
                    f"Use bracket notion ['my prop'] if your property contains blank characters: {path}"
                )
            if match.end() < len(path) and path[match.end()] in " (":
                raise UnsupportedJsonPath(f"functions and blanks are not evaluated by the stand-in: {path}")
            tokens.append(("names", (match.group(),)))
            i = match.end()
    return tokens


def _bracket(inner: str) -> tuple[str, Any]:
    if inner == "*":
        return ("wild", None)
    if inner.startswith("?"):
        raise UnsupportedJsonPath("JsonPath filters [?(...)] are not evaluated by the stand-in")
    if inner[:1] in ("'", '"'):
        names = re.findall(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", inner)
        return ("names", tuple(a or b for a, b in names))
    if re.fullmatch(r"-?\d*:-?\d*", inner):
        start, stop = (int(part) if part else None for part in inner.split(":"))
        return ("slice", (start, stop))
    if re.fullmatch(r"-?\d+(\s*,\s*-?\d+)*", inner):
        indexes = tuple(int(part) for part in inner.split(","))
        return ("index", indexes)
    raise UnsupportedJsonPath(f"Could not parse token [{inner}]")  # e.g. [a]: Echo's InvalidPathException


def _definite(tokens: Sequence[tuple[str, Any]]) -> bool:
    return all(kind == "names" or (kind == "index" and len(arg) == 1) for kind, arg in tokens)


def _step(node: Any, kind: str, arg: Any) -> Iterable[Any]:
    if kind == "names" and isinstance(node, Mapping):
        if len(arg) > 1:  # ['a','b'] merges the properties into a map, which no constraint can match
            yield {name: node[name] for name in arg if name in node}
        elif arg[0] in node:
            yield node[arg[0]]
    elif kind == "wild":
        yield from (node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else ())
    elif kind == "index" and isinstance(node, list):
        for index in arg:
            if -len(node) <= index < len(node):
                yield node[index]
    elif kind == "slice" and isinstance(node, list):
        yield from node[arg[0] : arg[1]]


def _scan(node: Any) -> Iterable[Any]:
    yield node
    children = node.values() if isinstance(node, Mapping) else node if isinstance(node, list) else ()
    for child in children:
        yield from _scan(child)


def _without_nulls(value: Any) -> Any:
    """Gson.toJson drops null map entries (serializeNulls is off); list elements stay."""
    if isinstance(value, Mapping):
        return {str(k): _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def json_path_values(payload: Mapping[str, Any], path: str) -> list[Any] | None:
    """ArtifactMatcher.getValueUsingJsonPath: [string] for a scalar, the raw list for a list, else None."""
    try:
        tokens = _tokens(path)
    except UnsupportedJsonPath:
        return None  # InvalidPathException is caught and logged by Echo: no values
    nodes: list[Any] = [_without_nulls(payload)]
    for kind, arg in tokens:
        if kind == "scan":
            nodes = [found for node in nodes for found in _scan(node)]
        else:
            nodes = [found for node in nodes for found in _step(node, kind, arg)]
    if not _definite(tokens):
        return nodes  # an indefinite path always reads as a (possibly empty) JSONArray
    if not nodes:
        return None
    value = nodes[0]
    if isinstance(value, Mapping):
        return None  # read(String) and read(List) of an object both give null
    if isinstance(value, list):
        return value
    return [java_string(value)]


def _find_in_values(pattern: str, values: Sequence[Any]) -> bool:
    """`values.stream().anyMatch(v -> matches(us, v))` on a raw List<String>: short-circuits; a
    non-string element reached is a ClassCastException, a null one a NullPointerException."""
    for value in values:
        if not isinstance(value, str):
            kind = "NullPointerException" if value is None else "ClassCastException"
            raise EventDropped(f"{kind}: JsonPath element {java_string(value)} is not a String")
        if regex_find(pattern, value):
            return True
    return False


def is_constraint_in_payload(constraints: Mapping[Any, Any], payload: Mapping[str, Any]) -> bool:
    """ArtifactMatcher.isConstraintInPayload: every key present (non-null); a non-null constraint found."""
    for key, constraint in constraints.items():
        if payload.get(key) is None:
            return False
        if constraint is not None and not regex_find(java_string(constraint), java_string(payload[key])):
            return False
    return True


def is_json_path_constraint_in_payload(constraints: Mapping[Any, Any], payload: Mapping[str, Any]) -> bool:
    """ArtifactMatcher.isJsonPathConstraintInPayload (what WebhookEventHandler uses); may raise EventDropped."""
    for key, constraint in constraints.items():
        if payload.get(key) is None:  # absent or null at the top level: try the key as a JsonPath
            values = json_path_values(payload, java_string(key))
            if values is None:
                return False
            if constraint is None:
                raise EventDropped(f"NullPointerException: constraint {key!r} is null")
            if _find_in_values(java_string(constraint), values):
                continue
            return False
        if constraint is not None and not regex_find(java_string(constraint), java_string(payload[key])):
            return False
    return True


# --- expected artifacts ---------------------------------------------------------------------------------


def _field_matches(ours: Any, other: Any) -> bool:
    """ExpectedArtifact.matches(String, String): empty matches all; equal, or the whole value matches."""
    if ours is None or ours == "":
        return True
    if other is None:
        return False
    us, them = java_string(ours), java_string(other)
    try:
        return us == them or java_pattern(us).fullmatch(them) is not None
    except re.error as error:
        raise TriggerSkipped(f"PatternSyntaxException: {us!r}: {error}") from error


def expected_artifact_matches(match_artifact: Mapping[str, Any], artifact: Mapping[str, Any]) -> bool:
    """kork ExpectedArtifact.matches: type (with embedded/remote base64 equivalence), name, version,
    location, reference; raises (like Java) on an invalid regex or a missing type it must compare."""
    ours, other = match_artifact.get("type"), artifact.get("type")
    if not _field_matches(ours, other):
        if other is None:
            raise TriggerSkipped("NullPointerException: artifact without a type")  # us/other.equals(...)
        if {java_string(ours), java_string(other)} != {EMBEDDED_BASE64, REMOTE_BASE64}:
            return False
    return all(_field_matches(match_artifact.get(name), artifact.get(name)) for name in _ARTIFACT_FIELDS)


def any_artifacts_match_expected(
    artifacts: Sequence[Mapping[str, Any] | None] | None,
    expected_artifact_ids: Sequence[str] | None,
    pipeline_expected_artifacts: Sequence[Mapping[str, Any]] | None,
) -> bool:
    """ArtifactMatcher.anyArtifactsMatchExpected: no ids → true; else some artifact matches some expected
    artifact whose id the trigger lists. TriggerSkipped where kork's Java throws."""
    if not expected_artifact_ids:
        return True
    expected = [e for e in pipeline_expected_artifacts or () if e.get("id") in expected_artifact_ids]
    for artifact in artifacts or ():
        for e in expected:
            if artifact is None:
                raise TriggerSkipped("NullPointerException: a null artifact")
            if expected_artifact_matches(e.get("matchArtifact") or {}, artifact):
                return True
    return False
