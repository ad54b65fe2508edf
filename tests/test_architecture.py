"""The layout's rules (docs/architecture.md), each a function of a source root that returns its violations, so that
the same rule runs on the project and on a copy with a planted violation: a rule that stays green there is no rule.

Components: the node (dicom_denoise_node), the trainer (denoise_trainer), the harness (denoise_harness), the demo
(denoise_demo) and bench; tests may import anything and are not checked here.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each component's top-level package and where it lives under the root.
SOURCES = {
    "dicom_denoise_node": "dicom_denoise_node",
    "denoise_trainer": "trainer/denoise_trainer",
    "denoise_harness": "harness/denoise_harness",
    "denoise_demo": "harness/denoise_demo",
    "bench": "bench",
}
COMPONENT = {
    "dicom_denoise_node": "node",
    "denoise_trainer": "trainer",
    "denoise_harness": "harness",
    "denoise_demo": "demo",
    "bench": "bench",
    "tests": "tests",
}
# Who may import whom: the one-way dependency node ← trainer ← harness/demo (bench may use all but the tests).
ALLOWED = {
    "node": {"node"},
    "trainer": {"trainer", "node"},
    "harness": {"harness", "node", "trainer"},
    "demo": {"demo", "harness", "node", "trainer"},
    "bench": {"bench", "harness", "demo", "node", "trainer"},
}
STAGES = ("receive", "complete", "denoise", "send")
# What the node must never load by name: the parts that depend on it.
NOT_FROM_THE_NODE = re.compile(r"\b(denoise_trainer|denoise_harness|denoise_demo)\b")
IMPORT_FUNCTIONS = {"import_module", "__import__", "find_spec", "run_module", "resolve_name", "load_module"}

# A whole file (path) or one access ("path: what", as the rule reports it without the line) → why it may touch
# another module's private names. pynetdicom_patches.py is the one place that reaches into pynetdicom.
PRIVATE_ACCESS_EXCEPTIONS = {
    "dicom_denoise_node/pynetdicom_patches.py": "every reach into pynetdicom's internals, with the versions checked",
}

MAX_MODULE_LINES = 420  # "about 400"
MAX_CLASS_LINES = 260  # "about 250"
MAX_FUNCTION_LINES = 85  # "about 80"
# path (module) or path::qualname (class, function) → why it stays over the limit. Keep it as short as possible.
SIZE_EXCEPTIONS = {
    "dicom_denoise_node/store/migrations/versions/0001_schema_1.py::upgrade": "an Alembic revision is history: "
    "databases were migrated by it as written",
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted import name
    path: str  # relative to the root, for messages that read the same on a copy
    tree: ast.Module
    lines: int

    @property
    def component(self) -> str:
        return COMPONENT[self.name.split(".")[0]]


@dataclass(frozen=True)
class Import:
    target: str  # the imported module, or the module a name is taken from
    line: int
    module_level: bool  # runs at import time (not in a function, not under `if TYPE_CHECKING:`)


@functools.cache
def load(root: Path) -> dict[str, Module]:
    """Every Python module of the components under ``root``, parsed once."""
    found = {}
    for package, folder in SOURCES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = [package, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(root).as_posix()
            found[".".join(parts)] = Module(".".join(parts), rel, ast.parse(text, rel), text.count("\n"))
    return found


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _import_nodes(tree: ast.AST, module_level: bool = True) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each import statement and whether it runs when the module is imported."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, module_level
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _import_nodes(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child):
            yield from _import_nodes(child, False)
        else:
            yield from _import_nodes(child, module_level)


def imports(module: Module, modules: dict[str, Module]) -> Iterator[Import]:
    """Every import of ``module`` (any form, at any depth), relative ones resolved against its package."""
    is_package = module.path.endswith("__init__.py")
    for node, module_level in _import_nodes(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, module_level)
            continue
        if node.level:
            base = module.name.split(".") if is_package else module.name.split(".")[:-1]
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [a.name for a in node.names]
        for sub in (n for n in names if f"{target}.{n}" in modules):
            yield Import(f"{target}.{sub}", node.lineno, module_level)
        if any(f"{target}.{n}" not in modules for n in names):
            yield Import(target, node.lineno, module_level)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _stage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "dicom_denoise_node" and len(parts) > 1 and parts[1] in STAGES else None


def stages_do_not_import_each_other(root: Path) -> list[str]:
    """receive/, complete/, denoise/ and send/ share only store/ (the catalog and the spool), config, model, ops:
    a stage that imports another's body couples what the catalog keeps apart. Only pipeline.py and cli/ wire them;
    what sits below the stages (store, config, model, ops, codecs, …) imports none."""
    modules = load(root)
    found = []
    for module in modules.values():
        if module.component != "node" or module.name == "dicom_denoise_node.pipeline":
            continue
        if module.name.startswith("dicom_denoise_node.cli"):
            continue
        own = _stage(module.name)
        for imp in imports(module, modules):
            other = _stage(imp.target)
            if other and other != own:
                found.append(f"{module.path}:{imp.line}: {own or 'below the stages'} imports {imp.target} ({other})")
    return found


def no_private_access(root: Path) -> list[str]:
    """A `_name` belongs to its module or class: no `from m import _x`, no private module, and no `expr._x` through
    anything but `self`/`cls` (a parameter, an attribute, a module), whatever the expression."""
    found = []
    for module in load(root).values():
        if module.path in PRIVATE_ACCESS_EXCEPTIONS:
            continue
        accesses: list[tuple[int, str]] = []
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                dotted = [a.name for a in node.names] + ([node.module] if getattr(node, "module", None) else [])
                accesses += [(node.lineno, f"imports {n}") for n in dotted if any(map(_is_private, n.split(".")))]
            elif isinstance(node, ast.Attribute) and _is_private(node.attr):
                if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                    accesses.append((node.lineno, ast.unparse(node)))
        found += [
            f"{module.path}:{line}: {what}"
            for line, what in accesses
            if f"{module.path}: {what}" not in PRIVATE_ACCESS_EXCEPTIONS
        ]
    return found


def _function_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def node_loads_nothing_by_name(root: Path) -> list[str]:
    """The node never loads the trainer, the harness or the demo by name (importlib, __import__, find_spec, …), nor
    anything through a computed name; installed parts reach it through the `denoise_node.commands` entry points,
    which name a group, not a package."""
    found = []
    for module in load(root).values():
        if module.component != "node":
            continue
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Call) and _function_name(node) in IMPORT_FUNCTIONS):
                continue
            arguments = [*node.args, *(k.value for k in node.keywords)]
            computed = not arguments or not (
                isinstance(arguments[0], ast.Constant) and isinstance(arguments[0].value, str)
            )
            named = any(
                isinstance(n, ast.Constant) and isinstance(n.value, str) and NOT_FROM_THE_NODE.search(n.value)
                for argument in arguments
                for n in ast.walk(argument)
            )
            if computed or named:
                found.append(f"{module.path}:{node.lineno}: {ast.unparse(node)}")
    return found


def imports_go_one_way(root: Path) -> list[str]:
    """node ← trainer ← harness/demo ← bench, at module level and inside functions alike."""
    modules = load(root)
    found = []
    for module in modules.values():
        for imp in imports(module, modules):
            top = imp.target.split(".")[0]
            if top in COMPONENT and COMPONENT[top] not in ALLOWED[module.component]:
                found.append(f"{module.path}:{imp.line}: {module.component} imports {imp.target} ({COMPONENT[top]})")
    return found


def no_import_cycle(root: Path) -> list[str]:
    """No cycle among the imports that run at import time (Tarjan's strongly connected components)."""
    modules = load(root)
    graph = {
        name: sorted({i.target for i in imports(module, modules) if i.module_level and i.target in modules})
        for name, module in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(members) > 1 or v in graph[v]:
                cycles.append("import cycle: " + " ↔ ".join(sorted(modules[m].path for m in members)))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def _definitions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + child.name, child
            yield from _definitions(child, f"{prefix}{child.name}.")
        else:
            yield from _definitions(child, prefix)


def oversized(root: Path) -> dict[str, str]:
    """Every module (path), class and function (path::qualname) over its limit → how far over."""
    found = {}
    for module in load(root).values():
        if module.lines > MAX_MODULE_LINES:
            found[module.path] = f"{module.lines} lines (module limit {MAX_MODULE_LINES})"
        for qualname, node in _definitions(module.tree):
            is_class = isinstance(node, ast.ClassDef)
            kind, limit = ("class", MAX_CLASS_LINES) if is_class else ("function", MAX_FUNCTION_LINES)
            length = node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]
            if length > limit:
                found[f"{module.path}::{qualname}"] = f"{length} lines ({kind} limit {limit})"
    return found


def everything_stays_small(root: Path) -> list[str]:
    """Modules, classes and functions of every component small enough to read in one sitting."""
    return [f"{key}: {why}" for key, why in oversized(root).items() if key not in SIZE_EXCEPTIONS]


RULES: list[Callable[[Path], list[str]]] = [
    stages_do_not_import_each_other,
    no_private_access,
    node_loads_nothing_by_name,
    imports_go_one_way,
    no_import_cycle,
    everything_stays_small,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
def test_the_project_keeps_the_rule(rule: Callable[[Path], list[str]]) -> None:
    violations = rule(ROOT)
    assert violations == [], "\n".join([f"{rule.__name__}: {len(violations)} violation(s)", *violations])


def test_the_rules_see_every_component() -> None:
    seen = {module.component for module in load(ROOT).values()}
    assert seen == set(ALLOWED), seen
    paths = {m.path for m in load(ROOT).values()}
    stale = [k for k in [*SIZE_EXCEPTIONS, *PRIVATE_ACCESS_EXCEPTIONS] if re.split("::|: ", k)[0] not in paths]
    assert stale == [], f"exceptions for files that are gone: {stale}"
    unneeded = [key for key in SIZE_EXCEPTIONS if key not in oversized(ROOT)]
    assert unneeded == [], f"size exceptions no longer needed: {unneeded}"


# Planted violations: (rule, file to change, text appended to it, what the rule must then report).
WORKER = "dicom_denoise_node/denoise/worker.py"
ROUTING = "dicom_denoise_node/complete/routing.py"
EXPORT = "trainer/denoise_trainer/export.py"
PLANTS = {
    "stage import, absolute": (stages_do_not_import_each_other, WORKER, "from dicom_denoise_node.send import deliver"),
    "stage import, relative": (stages_do_not_import_each_other, WORKER, "from ..send.deliver import deliver_claim"),
    "stage import, package": (stages_do_not_import_each_other, WORKER, "import dicom_denoise_node.send.deliver"),
    "stage import, in a function": (
        stages_do_not_import_each_other,
        WORKER,
        "def late() -> None:\n    from dicom_denoise_node.send import deliver  # noqa",
    ),
    "private call through a parameter": (
        no_private_access,
        ROUTING,
        "def record(catalog: object) -> None:\n    catalog._record_one()",
    ),
    "private call through an attribute": (
        no_private_access,
        ROUTING,
        "class Holder:\n    def run(self) -> None:\n        self.catalog._record_one()",
    ),
    "private name imported": (no_private_access, ROUTING, "from dicom_denoise_node.store.catalog import _record_one"),
    "private access in the trainer": (no_private_access, EXPORT, "def peek(x: object) -> object:\n    return x._cache"),
    "import_module of the trainer": (
        node_loads_nothing_by_name,
        WORKER,
        'import importlib\nimportlib.import_module("denoise_trainer.train")',
    ),
    "__import__ of the harness": (node_loads_nothing_by_name, ROUTING, '__import__("denoise_harness.node")'),
    "computed module name": (
        node_loads_nothing_by_name,
        ROUTING,
        "from importlib import import_module\nimport_module(f\"denoise_{'trainer'}\")",
    ),
    "node imports the trainer in a function": (
        imports_go_one_way,
        WORKER,
        "def late() -> None:\n    import denoise_trainer.train  # noqa",
    ),
    "trainer imports the harness": (imports_go_one_way, EXPORT, "from denoise_harness import net"),
    "stage imported below the stages": (
        stages_do_not_import_each_other,
        "dicom_denoise_node/store/retention.py",
        "from dicom_denoise_node.send.deliver import deliver_claim",
    ),
    "import cycle": (
        no_import_cycle,
        "dicom_denoise_node/store/spool.py",
        "from dicom_denoise_node.store import retention",
    ),
    "trainer module of 891 lines": (everything_stays_small, EXPORT, "# padding\n" * 891),
    "harness function of 90 lines": (
        everything_stays_small,
        "harness/denoise_harness/net.py",
        "def long() -> None:\n" + "    pass\n" * 89,
    ),
    "bench class of 270 lines": (everything_stays_small, "bench/common.py", "class Long:\n" + "    x = 1\n" * 269),
}


def _copy_sources(root: Path) -> None:
    """The components' Python files (nothing else: the bundled models are large) under ``root``."""

    def not_python(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or (not n.endswith(".py") and not Path(folder, n).is_dir())]

    for folder in SOURCES.values():
        shutil.copytree(ROOT / folder, root / folder, ignore=not_python)


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_each_rule_goes_red_on_a_planted_violation(plant: str, tmp_path: Path) -> None:
    rule, path, text = PLANTS[plant]
    _copy_sources(tmp_path)
    before = set(rule(ROOT))
    target = tmp_path / path
    target.write_text(target.read_text(encoding="utf-8") + "\n\n" + text + "\n", encoding="utf-8")
    reported = [v for v in rule(tmp_path) if v not in before]
    assert any(path in v for v in reported), f"{rule.__name__} missed {plant!r}: {reported}"
