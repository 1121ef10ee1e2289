"""The import graph of ``detector`` and ``training`` has no cycle and its layers point down only.

Every module is found with :func:`pkgutil.iter_modules` (recursively, from the files: nothing
is imported, so ``training`` is checked without torch) and parsed with :mod:`ast`. All imports
count, including those inside functions (an import hidden in a function still ties the two
modules together); only imports under ``if TYPE_CHECKING:`` are left out, since they never run.

Layers, bottom to top (:data:`LAYERS`); a module imports only its own unit and units of lower
layers, never a unit beside it or above it:

1. the shared base: the ``detector`` package itself, ``errors``, ``fileio``, ``types``,
   ``logs``, ``clock``, ``styles`` (QGIS styles shared by the night's GeoPackage and the review side);
2. ``detector.geo`` (rasters, CRSs, grids and the one grid reader, DSMs, locations);
3. ``detector.config`` (the run's settings; its path type is ``geo.location``'s);
4. the stages, pure tile processing: ``detector.flight`` | ``detector.night``;
5. ``detector.review`` (the case registry) | ``detector.synth`` (test and demo data, drawn with
   the flight stage's camera);
6. ``detector.run`` (a night, orchestrated: lock, resume, merge, outputs, the registry update);
7. ``training`` (uses the run to evaluate, synth to make data);
8. ``detector.cli`` (loads ``training.cli`` by name), then ``detector.__main__``.

Besides: the package graph (``detector.<package>``, ``training``) has no cycle, and
``detector.synth`` is imported only by ``training`` and the ``buildwatch synth`` command,
``training`` by nothing in ``detector`` (the CLI loads it by name).
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "training")
#: who may import detector.synth (test and demo data): training, and the `buildwatch synth` command
SYNTH_USERS = ("training", "detector.cli.synth_cmd")
CLI_MODULES = ("detector.cli", "detector.__main__", "training.cli")

#: Bottom to top: each layer is {unit name: module prefixes}. A module belongs to the unit with the
#: longest matching prefix ("detector" alone is the package's __init__).
LAYERS = [
    {
        "base": (
            "detector",
            "detector.errors",
            "detector.fileio",
            "detector.types",
            "detector.logs",
            "detector.styles",
            "detector.clock",
        )
    },
    {"geo": ("detector.geo",)},
    {"config": ("detector.config",)},
    {"flight": ("detector.flight",), "night": ("detector.night",)},
    {"review": ("detector.review",), "synth": ("detector.synth",)},
    {"run": ("detector.run",)},
    {"training": ("training",)},
    {"cli": ("detector.cli",)},
    {"main": ("detector.__main__",)},
]


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
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


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
                targets.append(
                    sub if sub in modules else base
                )  # a submodule, or a name from `base`
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

    def strongconnect(
        v: str,
    ) -> None:  # Tarjan, iterative over the successors is not needed at this size
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
    assert {
        "detector.review.registry",
        "detector.run.night",
        "training.reviews",
        "detector.cli",
    } <= set(graph)
    # imports inside functions count: the run imports the review side only inside a function
    assert any(_under(m, ("detector.review",)) for m in graph["detector.run.night"])


def test_cycle_finder_reports_a_cycle():
    cycles = find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    for cycle in cycles:
        print("import cycle:", " -> ".join(cycle))
    assert not cycles, "import cycle(s): " + "; ".join(" -> ".join(c) for c in cycles)


def test_runtime_never_imports_synth_or_training():
    """``detector.synth`` only from itself, ``training`` and ``buildwatch synth``; ``training`` only from itself."""
    allowed = {"detector.synth": ("detector.synth", *SYNTH_USERS), "training": ("training",)}
    bad = [
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        for package, users in allowed.items()
        if _under(t, (package,)) and not _under(m, users)
    ]
    for line in bad:
        print(line)
    assert not bad, "; ".join(bad)


def test_library_never_imports_the_cli():
    bad = [
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if not _under(m, CLI_MODULES)
        for t in sorted(targets)
        if _under(t, ("detector.cli",))
    ]
    for line in bad:
        print(line)
    assert not bad, "; ".join(bad)


def unit_of(module: str) -> tuple[int, str]:
    """(layer index, unit name) of a module: the unit with the longest prefix matching it."""
    best = None
    for level, layer in enumerate(LAYERS):
        for unit, prefixes in layer.items():
            for prefix in prefixes:
                exact_only = prefix == "detector"  # the package itself, not everything under it
                if module == prefix or (not exact_only and module.startswith(prefix + ".")):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), level, unit)
    if best is None:
        raise KeyError(module)
    return best[1], best[2]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a unit beside or above the importing module's unit, as 'a (unit) imports b (unit)'."""
    bad = []
    for module, targets in sorted(graph.items()):
        level, unit = unit_of(module)
        for target in sorted(targets):
            t_level, t_unit = unit_of(target)
            if t_unit != unit and t_level >= level:
                where = "beside" if t_level == level else "above"
                bad.append(f"{module} ({unit}) imports {target} ({t_unit}, {where} it)")
    return bad


def package_of(module: str) -> str:
    """``detector.<package>`` (or the top-level module), or ``training``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "detector" else parts[0]


def test_every_module_has_a_layer():
    unplaced = []
    for module in import_graph():
        try:
            unit_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


def test_layer_check_reports_an_upward_and_a_sideways_import():
    graph = {
        "detector.geo.grid": {"detector.night.mosaic"},
        "detector.flight.ingest": {"detector.night.height"},
        "detector.night.tile": {"detector.geo.grid", "detector.types"},
    }
    assert upward_imports(graph) == [
        "detector.flight.ingest (flight) imports detector.night.height (night, beside it)",
        "detector.geo.grid (geo) imports detector.night.mosaic (night, above it)",
    ]


def test_layers_point_down_only():
    bad = upward_imports(import_graph())
    for line in bad:
        print(line)
    assert not bad, "; ".join(bad)


def test_no_package_level_cycle():
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        src = package_of(module)
        packages.setdefault(src, set()).update(
            package_of(t) for t in targets if package_of(t) != src
        )
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    cycles = find_cycles(packages)
    assert not cycles, "package cycle(s): " + "; ".join(" -> ".join(c) for c in cycles)
