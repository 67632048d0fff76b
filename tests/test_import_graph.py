"""No import cycles among the modules of mixfast, counting every import: at the top of a file,
inside functions and methods (a lazy import still ties the two modules together), relative
imports, and `importlib.import_module("...")` with a literal name.

An edge goes to the module an import names: `from mixfast.data.files import FileView` and
`from mixfast.data import files` both point at mixfast.data.files; `from mixfast.data import
DataError` points at the package mixfast.data (its __init__). kernels/ counts as
mixfast.kernels, as it is installed. A cycle is a set of two or more modules each reachable from
the others; the failure names one path `a -> b -> ... -> a` through each such set.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package under `root` (mixfast/, and kernels/ as mixfast.kernels):
    dotted name -> file; a package's name -> its __init__.py."""
    files = sorted((root / "mixfast").rglob("*.py")) + sorted((root / "kernels").glob("*.py"))
    modules = {}
    for path in files:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[0] == "kernels":
            parts.insert(0, "mixfast")
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The module named by `from <dots><module> import ...` in module `importer`."""
    if node.level == 0:
        return node.module
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _named_modules(node: ast.AST, importer: str, is_package: bool, modules: dict) -> list[str]:
    """The dotted names that one AST node imports (none for any other node)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(node, importer, is_package)
        # `from base import x`: x is a submodule of base, or a name defined in base
        members = [f"{base}.{alias.name}" for alias in node.names]
        submodules = [name for name in members if name in modules]
        return submodules if len(submodules) == len(members) else [base, *submodules]
    literal_import_module = (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "import_module"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )
    return [node.args[0].value] if literal_import_module else []


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the package it imports anywhere in its file (not itself)."""
    modules = module_files(root)
    graph = {}
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _named_modules(node, importer, is_package, modules):
                # a name below a module (`import mixfast.a.b.attr`) belongs to that module
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != importer:
                    targets.add(name)
        graph[importer] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in sorted(graph):
        if root in index:
            continue
        visit(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    components.append(sorted(component))
            elif child not in index:
                visit(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def shortest_cycle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest cycle through the first module of a strongly connected component, as the
    path that ends where it starts."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} holds no cycle")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle, named as a path, per set of modules that import each other."""
    components = [c for c in strongly_connected(graph) if len(c) > 1]
    return sorted(shortest_cycle(component, graph) for component in components)


def describe_cycles(graph: dict[str, set[str]]) -> str:
    """Each set of modules that import each other: one cycle through it, and all its members."""
    lines = []
    for component in strongly_connected(graph):
        if len(component) > 1:
            cycle = " -> ".join(shortest_cycle(component, graph))
            lines.append(f"{cycle}   (the set: {', '.join(component)})")
    return "\n".join(sorted(lines))


def test_the_checker_sees_lazy_relative_and_literal_imports(tmp_path):
    """An import inside a function, relative imports (of a module and of a name) and
    importlib.import_module("...") each make an edge; the cycles are found and named."""
    files = {
        "mixfast/__init__.py": "",
        "mixfast/sub/__init__.py": "from mixfast.sub.c import h\n",
        "mixfast/sub/a.py": "def f():\n    from mixfast.sub.b import g\n",
        "mixfast/sub/b.py": "from . import c\n",
        "mixfast/sub/c.py": "from .a import f\n\ndef h():\n    pass\n",
        "mixfast/d.py": "import importlib\n\nimportlib.import_module('mixfast.e')\n",
        "mixfast/e.py": "from mixfast import d\nimport torch\n",
        "mixfast/f.py": "from .sub import h\n",
        "kernels/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["mixfast.sub.a"] == {"mixfast.sub.b"}
    assert graph["mixfast.sub.b"] == {"mixfast.sub.c"}
    assert graph["mixfast.sub.c"] == {"mixfast.sub.a"}
    assert graph["mixfast.f"] == {"mixfast.sub"}
    assert graph["mixfast.e"] == {"mixfast.d"}
    assert import_cycles(graph) == [
        ["mixfast.d", "mixfast.e", "mixfast.d"],
        ["mixfast.sub.a", "mixfast.sub.b", "mixfast.sub.c", "mixfast.sub.a"],
    ]


def test_the_graph_holds_every_module_and_the_lazy_imports():
    graph = import_graph()
    assert {"mixfast", "mixfast.data.files", "mixfast.kernels.attention"} <= set(graph)
    # an import inside a function body (the Triton launcher, chosen at call time)
    assert "mixfast.kernels.attention" in graph["mixfast.ops.attention"]


def test_no_import_cycles_in_mixfast():
    graph = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s) in mixfast:\n{describe_cycles(graph)}"
