"""No import cycle inside the kdmri package.

The imports are read from the source with :mod:`ast`, not by importing it: every
``import kdmri...`` and ``from ... import ...`` statement, at module level or inside a
function (an import made on first use still ties the two modules together), relative ones
resolved against the importing module's package, and ``importlib.import_module`` called
with a literal name. ``from package import name`` imports the submodule ``package.name``
where there is one, else the package itself. A cycle is a strongly connected component
of that graph (Tarjan's algorithm) with more than one module, or a module importing
itself; the test prints one closed path through each.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "kdmri"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> source file of every module of the package (``__init__.py``: the
    package's own name)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module name of ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base[: len(base) - (level - 1)] if is_package else base[: len(base) - level]
    return ".".join([*base, name] if name else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` (source ``path``) imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        # a name inside the package: the deepest module it names (kdmri.a.b.attr -> kdmri.a.b)
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts and parts[0] == PACKAGE:
            found.add(".".join(parts))

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in modules else source)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One closed path ``[a, b, ..., a]`` per strongly connected component that holds a
    cycle, found with Tarjan's algorithm (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    found = []
    for component in components:
        first = component[0]
        if len(component) > 1 or first in graph[first]:
            found.append(_closed_path(graph, set(component), first))
    return sorted(found)


def _closed_path(graph: dict[str, set[str]], members: set[str], first: str) -> list[str]:
    """A shortest path from ``first`` back to itself inside one component (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [first]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == first:
                    path = [node]
                    while path[-1] != first:
                        path.append(parents[path[-1]])
                    return [first, *reversed(path[:-1]), first]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{first}: no cycle through it in its component")


def test_no_import_cycle_inside_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles inside kdmri:\n" + "\n".join(" -> ".join(c) for c in found)


# ---------------------------------------------------------------------- the walker itself
def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(root)


def test_the_walker_resolves_relative_absolute_and_lazy_imports(tmp_path):
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from kdmri.sub import b\nimport numpy\n",
        "sub/__init__.py": "from .b import thing\n",
        "sub/b.py": "def f():\n    from ..c import g\n    import kdmri.sub.d as d\n",
        "c.py": "from . import a\nfrom kdmri.sub.b import f\n",
        "sub/d.py": "import importlib\nimportlib.import_module('kdmri.c')\nfrom .. import e\n",
        "e.py": "from kdmri import __version__\n",
    })
    assert graph == {
        "kdmri": set(), "kdmri.a": {"kdmri.sub.b"}, "kdmri.sub": {"kdmri.sub.b"},
        "kdmri.sub.b": {"kdmri.c", "kdmri.sub.d"}, "kdmri.c": {"kdmri.a", "kdmri.sub.b"},
        "kdmri.sub.d": {"kdmri.c", "kdmri.e"}, "kdmri.e": {"kdmri"},
    }
    assert cycles(graph) == [["kdmri.a", "kdmri.sub.b", "kdmri.c", "kdmri.a"]]


@pytest.mark.parametrize(("graph", "expected"), [
    ({"x": {"y"}, "y": {"z"}, "z": set()}, []),
    ({"x": {"x"}}, [["x", "x"]]),
    ({"x": {"y"}, "y": {"x"}, "z": {"x"}}, [["x", "y", "x"]]),
    ({"p": {"q"}, "q": {"r", "p"}, "r": {"p"}, "s": {"t"}, "t": {"s"}},
     [["p", "q", "p"], ["s", "t", "s"]]),
])
def test_cycles_finds_each_component_once(graph, expected):
    assert cycles(graph) == expected
