"""Import rules, read from the source (every import, at module level or inside a function):

- the deployed library (functions/) imports neither the local stack, the command nor the web view;
- the local stack never imports the command (the command is a plugin host; the stack is its plugin);
- no import circle among the local stack's modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _offending(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(REPO)} imports {name}"
        for path in folder.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in forbidden
    )


def test_the_deployed_library_imports_no_local_stack_command_or_web_view() -> None:
    assert _offending(REPO / "functions", ("local_emulator", "cd4ml_cli", "cd4ml_ui")) == []


def test_the_local_stack_never_imports_the_command() -> None:
    assert _offending(REPO / "local_emulator", ("cd4ml_cli",)) == []


def _graph() -> dict[str, set[str]]:
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (REPO / "local_emulator").rglob("*.py")
    }
    return {
        name: {m for m in modules if m != name and any(i == m or i.startswith(m + ".") for i in _imports(path))}
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle, as the modules along it; empty when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_the_local_stack_has_no_import_circle() -> None:
    assert " → ".join(_cycle(_graph())) == ""


def test_a_circle_is_found_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
