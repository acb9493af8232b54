"""The shape of the ``tupac`` package, measured on its source (issue 16's before / after figures).

Counts modules, the largest module, functions longer than 80 lines and internal imports that sit
inside function bodies (``import tupac...`` below a ``def``), with ``ast`` only (nothing is imported).

Run ``python benchmarks/code_shape.py [PACKAGE_DIR] [--baseline OLD_PACKAGE_DIR] [--out FILE.json]``; it
prints the JSON too. With ``--baseline`` (e.g. a ``git worktree`` of an older commit's ``tupac/``)
both are measured, under ``"baseline"`` and ``"current"``.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

LONG_FUNCTION_LINES = 80


def _is_tupac_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "tupac"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "tupac" for a in node.names)
    return False


def _deferred_imports(tree: ast.AST) -> tuple[int, int]:
    """``(internal imports in function bodies, all internal imports)`` of one module."""
    inside = total = 0
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    in_function = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if _is_tupac_import(node):
            total += 1
            inside += id(node) in in_function
    return inside, total


def measure(package: Path, exclude_cli: bool = True) -> dict:
    """Figures for every ``*.py`` under ``package`` (imports counted outside ``cli/`` when asked)."""
    modules = sorted(package.rglob("*.py"))
    sizes, long_functions = {}, []
    inside = total = 0
    for path in modules:
        rel = str(path.relative_to(package.parent))
        text = path.read_text()
        sizes[rel] = len(text.splitlines())
        tree = ast.parse(text, filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONG_FUNCTION_LINES:
                    long_functions.append({"function": f"{rel}:{node.name}", "lines": length})
        if exclude_cli and rel.startswith(f"{package.name}/cli/"):
            continue
        i, t = _deferred_imports(tree)
        inside, total = inside + i, total + t
    largest = max(sizes, key=sizes.get)
    return {
        "package": str(package),
        "modules": len(modules),
        "lines": sum(sizes.values()),
        "largest_module": {"module": largest, "lines": sizes[largest]},
        "modules_over_500_lines": sorted(m for m, n in sizes.items() if n > 500),
        f"functions_over_{LONG_FUNCTION_LINES}_lines": sorted(long_functions, key=lambda f: -f["lines"]),
        "internal_imports": total,
        "internal_imports_in_function_bodies": inside,
        "imports_counted": "outside cli/" if exclude_cli else "all modules",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "tupac"))
    parser.add_argument("--baseline", help="an older copy of the package to measure beside it")
    parser.add_argument("--out", help="write the JSON here as well")
    args = parser.parse_args()
    figures = measure(Path(args.package).resolve())
    if args.baseline:
        figures = {"baseline": measure(Path(args.baseline).resolve()), "current": figures}
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
