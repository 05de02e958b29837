"""Import rules, read from the source (every import, at module level or inside a function):

- the deployed library (functions/) imports neither the local stack, the command nor the web view;
- the local stack never imports the command (the command is a plugin host; the stack is its plugin);
- no import circle among the local stack's modules, nor among its packages (one per service, plus ``common``);
- the local stack's top level holds no module but the ``cd4ml local`` plugin (``cli``), so it stays one package per
  service.
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
    """Each local stack module and the modules it imports.

    An imported name counts for the most specific module it names: ``local_emulator.vertex.envs.trainer_env`` is an
    edge to ``local_emulator.vertex.envs``, not to the package ``local_emulator.vertex`` that Python runs first (a
    circle through a package's ``__init__`` matters only when it reads the package's own names, which is an import
    of the package itself: ``from local_emulator.vertex import name``)."""
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (REPO / "local_emulator").rglob("*.py")
    }

    def target(name: str) -> str | None:
        return max((m for m in modules if name == m or name.startswith(m + ".")), key=len, default=None)

    return {
        name: {t for i in _imports(path) if (t := target(i)) is not None and t != name}
        for name, path in modules.items()
    }


def _package(module: str) -> str:
    """The local stack package a module belongs to: ``local_emulator.vertex.envs`` → ``local_emulator.vertex``."""
    return ".".join(module.split(".")[:2])


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {_package(name): set() for name in graph}
    for name, imported in graph.items():
        packages[_package(name)] |= {_package(m) for m in imported} - {_package(name)}
    return packages


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


def test_the_local_stack_packages_have_no_import_circle() -> None:
    assert " → ".join(_cycle(_package_graph(_graph()))) == ""


def test_the_local_stack_is_one_package_per_service() -> None:
    """Only the ``cd4ml local`` plugin (pyproject's ``cd4ml.cli`` entry point) is a module at the top; every
    folder is a package."""
    top = REPO / "local_emulator"
    assert sorted(p.name for p in top.glob("*.py")) == ["__init__.py", "cli.py"]
    assert [
        d.name for d in top.iterdir() if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()
    ] == []


def test_a_package_circle_is_found_when_modules_of_two_packages_import_each_other() -> None:
    graph = {
        "local_emulator.a.x": {"local_emulator.b.y"},
        "local_emulator.b.y": set(),
        "local_emulator.b.z": {"local_emulator.a"},
        "local_emulator.a": set(),
    }
    assert _cycle(graph) == []
    assert _cycle(_package_graph(graph)) == ["local_emulator.a", "local_emulator.b", "local_emulator.a"]


def test_a_circle_is_found_when_there_is_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
