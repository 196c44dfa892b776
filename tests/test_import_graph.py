"""The package's import graph, read statically: no arrow against the layers, no import cycle.

Layers (ARCHITECTURE.md): ``common``/``errors`` import nothing else of smallpond; ``io`` imports
only those; ``logical`` only those and ``io``; ``execution`` never imports the DataFrame facade
(``smallpond``, ``smallpond.session``, ``smallpond.dataframe``). Every import counts, at module
level or inside a function; only a module-level ``__getattr__`` (the lazy forwarding idiom) and
``if TYPE_CHECKING:`` blocks are exempt, and ``smallpond.compat`` (upstream import paths) may
point anywhere. Cycles count every import too: a function-level import that closes a loop is
still a loop in the design.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smallpond")

ALLOWED = {
    "common": {"common", "errors"},
    "errors": {"common", "errors"},
    "io": {"io", "common", "errors"},
    "logical": {"logical", "io", "common", "errors", "utility"},
}
FORBIDDEN = {"execution": {"top", "session", "dataframe"}}


def _modules(pkg: str = PKG) -> Dict[str, str]:
    out = {}
    root = os.path.dirname(pkg)
    for dirpath, _, files in os.walk(pkg):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return "top" if len(parts) == 1 else parts[1]


def _exempt_nodes(tree: ast.Module) -> Set[int]:
    exempt: Set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            exempt.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            exempt.update(id(n) for n in ast.walk(node))
    return exempt


def _imports(module: str, path: str, known: Dict[str, str]) -> List[Tuple[str, int]]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    exempt = _exempt_nodes(tree)
    is_pkg = path.endswith("__init__.py")
    out = []
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t == "smallpond" or t.startswith("smallpond."):
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                out.append((t, node.lineno))
    return out


def _graph(pkg: str = PKG):
    known = _modules(pkg)
    edges: Dict[str, Set[str]] = {}
    broken = []
    for module, path in sorted(known.items()):
        if module == "smallpond.compat":
            continue
        src = _layer(module)
        for target, line in _imports(module, path, known):
            if target == module or target == "smallpond.compat":
                continue
            edges.setdefault(module, set()).add(target)
            dst = _layer(target)
            if src in ALLOWED and dst not in ALLOWED[src]:
                broken.append(f"{module}:{line} ({src}) imports {target} ({dst})")
            if dst in FORBIDDEN.get(src, ()):
                broken.append(f"{module}:{line} ({src}) imports {target} ({dst})")
    return edges, broken


def _cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    sccs: List[List[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return sccs


def test_no_import_against_the_layers():
    _, broken = _graph()
    assert broken == []


def test_no_import_cycle():
    edges, _ = _graph()
    assert _cycles(edges) == []


@pytest.mark.parametrize("bad", ["smallpond.execution.planner", "smallpond.session"])
def test_the_check_sees_a_broken_arrow(tmp_path, monkeypatch, bad):
    """The checker itself fails when a logical module imports upward (inside a function, too).
    The probe goes into a copy of the package: written into the package itself, it made
    test_module_map, run at the same time by the other test process, see a module MODULES.md lacks."""
    import shutil

    pkg = str(tmp_path / "smallpond")
    shutil.copytree(PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(pkg, "logical", "_layer_probe.py"), "w") as f:
        f.write(f"def f():\n    import {bad}\n")
    _, broken = _graph(pkg)
    assert any("_layer_probe" in b for b in broken)
    assert not any("_layer_probe" in b for b in _graph()[1])
