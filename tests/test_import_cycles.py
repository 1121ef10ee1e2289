"""The import graph of ``detector`` and ``training`` has no cycle and follows the layering.

Every module is found with :func:`pkgutil.iter_modules` (recursively, from the files: nothing
is imported, so ``training`` is checked without torch) and parsed with :mod:`ast`. All imports
count, including those inside functions (an import hidden in a function still ties the two
modules together); only imports under ``if TYPE_CHECKING:`` are left out, since they never run.

Layering:

* the nightly runtime and the review side (``detector.night``, ``detector.flight``,
  ``detector.review``, ``detector.geo``) never import ``detector.synth`` (test and demo data)
  or ``training``;
* no library module imports ``detector.cli`` (only the CLI, ``detector.__main__`` and
  ``training.cli``, which registers its commands there, may).
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "training")
RUNTIME = ("detector.night", "detector.flight", "detector.review", "detector.geo")
NOT_FOR_RUNTIME = ("detector.synth", "training")
CLI_MODULES = ("detector.cli", "detector.__main__", "training.cli")


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def project_modules() -> dict[str, Path]:
    """Module name -> source file for every module of the project packages (nothing imported)."""
    modules: dict[str, Path] = {}

    def walk(name: str, folder: Path) -> None:
        modules[name] = folder / "__init__.py"
        for info in pkgutil.iter_modules([str(folder)]):
            child = f"{name}.{info.name}"
            if info.ispkg:
                walk(child, folder / info.name)
            else:
                modules[child] = folder / f"{info.name}.py"

    for package in PACKAGES:
        walk(package, ROOT / package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Import nodes anywhere in the tree (functions included), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_imports(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)  # a submodule, or a name from `base`
        for target in targets:
            # `import a.b.c` -> the deepest project module named
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) for every strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan, iterative over the successors is not needed at this size
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # breadth-first from start back to start inside the component: a shortest cycle
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = previous.get(v)
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def test_the_module_walk_finds_the_project():
    graph = import_graph()
    assert {"detector.review.registry", "detector.night.pipeline", "training.reviews", "detector.cli"} <= set(graph)
    # imports inside functions count: pipeline imports the review side only inside a function
    assert any(_under(m, ("detector.review",)) for m in graph["detector.night.pipeline"])


def test_cycle_finder_reports_a_cycle():
    cycles = find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    for cycle in cycles:
        print("import cycle:", " -> ".join(cycle))
    assert not cycles, "import cycle(s): " + "; ".join(" -> ".join(c) for c in cycles)


def test_runtime_never_imports_synth_or_training():
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if _under(m, RUNTIME)
           for t in sorted(targets) if _under(t, NOT_FOR_RUNTIME)]
    for line in bad:
        print(line)
    assert not bad, "; ".join(bad)


def test_library_never_imports_the_cli():
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if not _under(m, CLI_MODULES)
           for t in sorted(targets) if _under(t, ("detector.cli",))]
    for line in bad:
        print(line)
    assert not bad, "; ".join(bad)
