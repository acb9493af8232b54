"""The layer order of ``tupac/`` (README "Layout", ../shared/ARCHITECTURE.md), enforced on the import graph.

Every ``import tupac...`` / ``from tupac... import`` in the package, at the top of a file or inside a
function, is an edge of the graph (read with :mod:`ast`, nothing is imported; ``from pkg import sub``
is an edge to the submodule). A module may import its own layer and the layers below it, and the
graph has no loops. Ray may be imported only in ``infer/``, MLflow only in ``tracking/``.

``KNOWN_UPWARD`` and ``KNOWN_LOOPS`` are exceptions that may only shrink (issue 16 emptied them): a
new upward import or loop fails with its file and line, and an entry that no longer exists fails
too, so that it is taken off the list.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tupac"

# Bottom to top; a layer may import itself and any layer before it.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(names) for names in (
    {"__init__", "errors", "geometry", "runlock", "config_check"},  # import nothing above errors
    {"slide"},
    {"data"},
    {"preprocess"},
    {"models"},
    {"heatmaps"},
    {"train"},
    {"tumor", "mitosis"},
    {"features"},
    {"predict"},
    {"tracking"},
    {"report"},
    {"synth"},
    {"infer"},
    {"feature_run", "pipeline"},  # the drivers of whole stages over a run folder
    {"cli", "__main__"},
))

# (importer, imported) module pairs that run upward today; see the module docstring.
KNOWN_UPWARD = frozenset({
})

# Strongly connected sets of modules today (a package's __init__ re-exporting a submodule that
# imports the package back counts: the import order then decides what works).
KNOWN_LOOPS = frozenset({
})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _submodule_or_package(module: str, name: str) -> str:
    sub = PACKAGE.parent.joinpath(*module.split("."), name)
    return f"{module}.{name}" if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file() else module


def _imports() -> list[tuple[str, str, Path, int]]:
    """``(importer, imported, file, line)`` for every absolute import of ``tupac...`` in the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tupac":
                # ``from tupac.synth import fields`` imports the submodule: the edge goes there, not to the
                # package's __init__ (which Python runs first for any submodule import anyway).
                out += [(importer, _submodule_or_package(node.module, a.name), path, node.lineno) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(importer, a.name, path, node.lineno) for a in node.names if a.name.split(".")[0] == "tupac"]
    return out


# Third-party libraries that only one folder may import: the cluster runtime and the tracking
# server's client stay behind their folder's functions, so every other stage runs without them.
CONFINED = {"ray": "tupac.infer", "mlflow": "tupac.tracking"}


def _third_party_imports() -> list[tuple[str, str, Path, int]]:
    """``(importer, top-level library, file, line)`` for every absolute import of a CONFINED library."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            out += [(importer, n.split(".")[0], path, node.lineno) for n in names if n.split(".")[0] in CONFINED]
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next((i for i, names in enumerate(LAYERS) if top in names), None)


def _loops(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def test_every_module_has_a_layer():
    folders = {_module_name(p).split(".")[1] if "." in _module_name(p) else "__init__" for p in PACKAGE.rglob("*.py")}
    assert not [f for f in sorted(folders) if _layer(f"tupac.{f}") is None], "add the new folder to LAYERS"


def test_no_import_runs_up_the_layers_beyond_the_known_ones():
    upward: dict[tuple[str, str], list[str]] = defaultdict(list)
    for importer, imported, path, line in _imports():
        low, high = _layer(importer), _layer(imported)
        if high is not None and low is not None and high > low:
            upward[(importer, imported)].append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    new = {pair: where for pair, where in upward.items() if pair not in KNOWN_UPWARD}
    assert not new, "imports from a higher layer (see ../shared/ARCHITECTURE.md): " + "; ".join(
        f"{where[0]} imports {imported} ({importer} is below it)" for (importer, imported), where in sorted(new.items()))
    gone = sorted(KNOWN_UPWARD - set(upward))
    assert not gone, f"no longer imported upward, take them off KNOWN_UPWARD: {gone}"


def test_no_import_loops_beyond_the_known_ones():
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for importer, imported, _, _ in _imports():
        if imported in modules and imported != importer:
            edges[importer].add(imported)
    loops = set(_loops(edges))
    assert not loops - KNOWN_LOOPS, f"new import loops: {[sorted(s) for s in loops - KNOWN_LOOPS]}"
    assert not KNOWN_LOOPS - loops, f"loops gone, take them off KNOWN_LOOPS: {[sorted(s) for s in KNOWN_LOOPS - loops]}"


def test_the_check_catches_an_upward_import_and_a_loop():
    # The checks themselves, on a made-up graph: a layer-0 module importing a slide reader, and a 3-cycle.
    assert _layer("tupac.errors") < _layer("tupac.slide.base") < _layer("tupac.infer.job") < _layer("tupac.cli.app")
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _loops(edges) == [frozenset({"a", "b", "c"})]


def test_ray_and_mlflow_are_imported_only_in_their_folder():
    outside = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {lib} (only {CONFINED[lib]} may)"
        for importer, lib, path, line in _third_party_imports()
        if importer != CONFINED[lib] and not importer.startswith(CONFINED[lib] + ".")
    ]
    assert not outside, "; ".join(outside)
