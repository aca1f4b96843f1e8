"""The package's layers read top-down, no import circles, and its Lua ships with it.

Every module's imports are parsed (module level, inside functions and under
``TYPE_CHECKING`` alike: a lazy import is still a dependency). A package may import its own
modules and those of packages in lower layers, never a package of its own layer or above;
no two modules may reach each other through imports.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "carbonedge"

LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"errors"},
    {"settings", "registry", "connections"},
    {"protocol"},
    {"carbon", "cgroups"},
    {"scheduler", "partitioner"},
    {"transport"},
    {"ops"},
    {"client", "dispatcher", "node_agent"},
    {"compose"},
    {"experiments"},
    {"cli", ""},
))
"""Bottom to top. ``carbon`` sits under the scheduler and the partitioner, which price
work with its formula (a plan predicts what is charged); ``ops`` (status, metrics, Flower,
ACLs) under the client, whose timeout diagnosis reads the cluster status. ``""`` is the
package's own ``__init__`` (the lazy ``from carbonedge import Client``)."""


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    imported: str
    line: int

    def __str__(self) -> str:
        path = _modules()[self.importer].relative_to(ROOT)
        return f"{path}:{self.line}: {self.importer} imports {self.imported}"


@cache
def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> Iterator[str]:
    """The package's modules an import statement names (``from pkg import mod`` names
    ``pkg.mod`` when that is a module, else ``pkg``)."""
    modules = _modules()
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module if _modules()[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    for alias in node.names:
        full = f"{base}.{alias.name}"
        yield full if full in modules else base


@cache
def _imports() -> tuple[Import, ...]:
    out = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out += [Import(module, name, node.lineno) for name in _targets(node, module)
                        if name == "carbonedge" or name.startswith("carbonedge.")]
    return tuple(out)


def _package(module: str) -> str:
    """The top-level part of the package a module belongs to (``""`` for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(package: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if package in layer), None)


def test_every_package_has_a_layer() -> None:
    unplaced = sorted({_package(m) for m in _modules()} - set().union(*LAYERS))
    assert not unplaced, f"packages in no layer (add them to LAYERS): {unplaced}"


def _against_layers(imports: tuple[Import, ...]) -> list[str]:
    """Each import of a package of the same layer or above, named."""
    wrong = []
    for imp in imports:
        importer, imported = _package(imp.importer), _package(imp.imported)
        if importer == imported:
            continue
        low, high = _layer(imported), _layer(importer)
        if low is None or high is None or low >= high:
            where = "its own layer" if low == high else "a layer above it"
            wrong.append(f"{imp} ({imported or 'carbonedge'} is in {where})")
    return wrong


def test_imports_only_point_down() -> None:
    wrong = _against_layers(_imports())
    assert not wrong, "imports that run against the layers:\n" + "\n".join(wrong)


def test_the_wire_contract_imports_only_errors_and_settings() -> None:
    wrong = [str(imp) for imp in _imports() if _package(imp.importer) == "protocol"
             and _package(imp.imported) not in ("protocol", "errors", "settings")]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    """Modules are nodes; an import, and the import of the packages above what it names
    (Python runs their ``__init__`` first), an edge."""
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for imp in _imports():
        parts = imp.imported.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            # a module's own packages are initialised before it runs: no edge
            if target in graph and not (imp.importer + ".").startswith(target + "."):
                graph[imp.importer].add(target)
    circles = _circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checks_catch_what_they_look_for() -> None:
    """Positive controls: an upward import, a sibling import and a circle are found."""
    upward = Import("carbonedge.protocol.messages", "carbonedge.partitioner.plans", 1)
    sibling = Import("carbonedge.node_agent.worker", "carbonedge.dispatcher.recovery", 2)
    down = Import("carbonedge.dispatcher.recovery", "carbonedge.transport.handback", 3)
    wrong = _against_layers((upward, sibling, down))
    assert len(wrong) == 2 and "protocol/messages.py:1" in wrong[0] and "above" in wrong[0]
    assert "node_agent/worker.py:2" in wrong[1] and "its own layer" in wrong[1]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from carbonedge.protocol import keys\nimport carbonedge.client\n")
    names = [n for node in tree.body for n in _targets(node, "carbonedge.cli")]  # type: ignore[arg-type]
    assert names == ["carbonedge.protocol.keys", "carbonedge.client"]


# -- Lua -----------------------------------------------------------------------------------


def _lua_scripts() -> list[tuple[str, Path, list[str]]]:
    """(module, its file, the .lua files it names) for each ``LuaScript(__package__, ...)``."""
    out = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "LuaScript"):
                files = [a.value for a in node.args[1:] if isinstance(a, ast.Constant)]
                out.append((module, path, files))
    return out


def test_every_lua_script_is_a_shipped_file() -> None:
    scripts = _lua_scripts()
    assert len(scripts) >= 9
    named = set()
    for module, path, files in scripts:
        assert files, f"{module}: a LuaScript without files"
        for name in files:
            assert (path.parent / name).is_file(), f"{module} names {name}, which is missing"
            named.add(path.parent / name)
    shipped = set(PACKAGE.rglob("*.lua"))
    assert shipped == named, f"Lua files no script runs: {sorted(map(str, shipped - named))}"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["carbonedge"]
    for lua in shipped:
        rel = lua.relative_to(PACKAGE).as_posix()
        assert any(fnmatch.fnmatch(rel, pattern) for pattern in package_data), \
            f"{rel} is not in pyproject's package-data: it would not ship"


def test_no_lua_is_sent_as_a_python_string() -> None:
    """Scripts run by EVALSHA from their files, not EVAL of source on every call."""
    evals = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("eval", "register_script")
                    and not (module == "carbonedge.protocol.lua"
                             and node.func.attr == "register_script")
                    and node.args):
                evals.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not evals, "Lua sent from Python: " + ", ".join(evals)
