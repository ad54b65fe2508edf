"""The layout's rules, checked on the source (docs/architecture.md): no import cycle, no private name used across
modules, imports only in the allowed direction, and modules and classes of the node small enough to read."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dicom_denoise_node", "bench")
# The trainer, the demo and the harness ship inside the project's namespace (denoise_trainer, …) so that no
# plain `trainer` or `demo` lands in site-packages; the node itself ("node": the rest of dicom_denoise_node) still
# never imports them. Who may import whom (component → components it may import); tests may import anything.
EXTRAS = ("trainer", "harness", "demo")
ALLOWED = {
    "node": {"node"},
    "trainer": {"trainer", "node"},
    "harness": {"harness", "node", "trainer"},
    "demo": {"demo", "harness", "node", "trainer"},
    "bench": {"bench", "harness", "demo", "node", "trainer"},
}


def component(module: str) -> str:
    """The layout's component of a module: node, trainer, harness, demo or bench."""
    parts = module.split(".")
    if parts[0] == "dicom_denoise_node":
        return parts[1] if len(parts) > 1 and parts[1] in EXTRAS else "node"
    return parts[0]


MAX_MODULE_LINES = 420  # "about 400" (issue 16)
MAX_CLASS_LINES = 260  # "about 250"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations/versions" in path.as_posix():
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(tree: ast.Module, name: str, top_level_only: bool) -> Iterator[tuple[str, list[str], ast.AST]]:
    """(imported module, names taken from it, node) for each import of a project module."""
    is_package = MODULES[name].name == "__init__.py"
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, [], node
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] not in PACKAGES:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            for sub in submodules:
                yield sub, [], node
            others = [n for n in names if f"{module}.{n}" not in MODULES]
            if others:
                yield module, others, node


def _trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


TREES = _trees()


def test_no_import_cycle_among_module_level_imports():
    graph = {
        name: {target for target, _, _ in _imports(tree, name, top_level_only=True) if target in MODULES}
        for name, tree in TREES.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_private_name_is_imported_or_used_across_modules():
    found = []
    for name, tree in TREES.items():
        bound: set[str] = set()  # local names bound to project modules
        for target, names, node in _imports(tree, name, top_level_only=False):
            found += [
                f"{name}: from {target} import {n}" for n in names if n.startswith("_") and not n.startswith("__")
            ]
            if isinstance(node, ast.Import):
                bound.update(a.asname or a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                bound.update(a.asname or a.name for a in node.names if f"{target}" in MODULES)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    assert found == []


def test_imports_go_in_the_allowed_direction():
    wrong = []
    for name, tree in TREES.items():
        package = component(name)
        for target, _, node in _imports(tree, name, top_level_only=False):
            if component(target) not in ALLOWED[package]:
                wrong.append(f"{name}:{node.lineno} imports {target}")
    assert wrong == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if component(n) == "node"))
def test_node_modules_and_classes_stay_small(name: str):
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]}: {lines} lines"
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ClassDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_CLASS_LINES, f"{MODULES[name]}: class {node.name} is {length} lines"
