"""The package's import graph and size limits, read from the source with ``ast`` (nothing is imported).

Run ``python tests/import_graph.py`` to print, for every module of
``minitspeft``, the package modules it imports, then any import cycle, any
file over 400 lines and any function over 60 lines (a function may be
longer if its docstring says why: it must contain "60 lines").
``tests/test_layers.py`` checks the same against the README's Layout table.
"""

from __future__ import annotations

import ast
import pathlib
import sys

PACKAGE = "minitspeft"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: pathlib.Path) -> str:
    """``minitspeft/peft/gate.py`` -> ``minitspeft.peft.gate``; a package's ``__init__.py`` is the package."""
    parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    """``{module name: path}`` for every ``.py`` file of the package."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom, known: set) -> set:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = current.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    found = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.add(sub if sub in known else base)
    return {m for m in found if m in known}


def graph() -> dict:
    """``{module: set of package modules it imports}``, local (in-function) imports included."""
    mods = modules()
    known = set(mods)
    edges = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets |= _resolve(name, path.name == "__init__.py", node, known)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in known}
        edges[name] = targets - {name}
    return edges


def cycles(edges: dict) -> list:
    """The strongly connected groups of more than one module (Tarjan's algorithm), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def long_files() -> list:
    """``(path, lines)`` of the files over :data:`MAX_FILE_LINES`."""
    out = []
    for path in modules().values():
        n = len(path.read_text().splitlines())
        if n > MAX_FILE_LINES:
            out.append((str(path.relative_to(ROOT.parent)), n))
    return out


def long_functions() -> list:
    """``(module.function, lines, excused)`` of the functions over :data:`MAX_FUNCTION_LINES`."""
    out = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    doc = ast.get_docstring(node) or ""
                    out.append((f"{name}.{node.name}", n, f"{MAX_FUNCTION_LINES} lines" in doc))
    return out


def main() -> int:
    edges = graph()
    for name in sorted(edges):
        inside = sorted(m.removeprefix(PACKAGE + ".") for m in edges[name])
        print(f"{name.removeprefix(PACKAGE + '.') or PACKAGE:28s} -> {', '.join(inside) or '-'}")
    print(f"\nimport cycles: {cycles(edges) or 'none'}")
    print(f"files over {MAX_FILE_LINES} lines: {long_files() or 'none'}")
    longs = [f"{n} ({k} lines{', docstring says why' if ok else ''})" for n, k, ok in long_functions()]
    print(f"functions over {MAX_FUNCTION_LINES} lines: {longs or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
