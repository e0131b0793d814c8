"""The package's floors: a module imports only from its own floor or a lower one, and no import circle.

Every module of ``rnn_lightning`` is parsed (not imported) with ``ast``; every ``import`` in it counts,
at module level or inside a function. The floors, lowest first:

0 base       errors, limits, files, runtime, checkpoint, tasks, task_metrics, signals (and the package itself)
1 network    network/*
2 text       text/*
3 models     models/*
4 inference  serving, inference, explain, page
5 training   training/*
6 top        server, command, schedules (an alias Lightning configs name)
"""

import ast
from pathlib import Path

PACKAGE = "rnn_lightning"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# module (dotted, below the package) or package prefix -> floor; the longest match decides
FLOORS = {
    "": 0,
    "errors": 0,
    "limits": 0,
    "files": 0,
    "runtime": 0,
    "checkpoint": 0,
    "tasks": 0,
    "task_metrics": 0,
    "signals": 0,
    "network": 1,
    "text": 2,
    "models": 3,
    "serving": 4,
    "inference": 4,
    "explain": 4,
    "page": 4,
    "training": 5,
    "server": 6,
    "command": 6,
    "schedules": 6,
}
FLOOR_NAMES = ["base", "network", "text", "models", "inference", "training", "top"]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, from its ``__init__.py``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def floor(module: str) -> int:
    """The floor of a module of the package; a module the table does not place fails the test."""
    below = module.removeprefix(PACKAGE).removeprefix(".")
    parts = below.split(".") if below else []
    for n in range(len(parts), -1, -1):
        key = ".".join(parts[:n])
        if key in FLOORS and (n > 0 or not parts):
            return FLOORS[key]
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layers.py")


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import in ``path``, wherever it stands.
    ``from a.b import c`` names the module ``a.b.c`` when there is one, else ``a.b``."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, up level - 1 more
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    ours = [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]
    return sorted(set(ours), key=lambda pair: (pair[1], pair[0]))  # ``from a import b, c``: a once


def graph() -> dict[str, list[tuple[str, int]]]:
    known = modules()
    return {module: imports(module, path, known) for module, path in known.items()}


def describe(module: str) -> str:
    return f"{module} (floor {floor(module)} {FLOOR_NAMES[floor(module)]})"


def test_every_module_is_on_a_floor():
    for module in modules():
        floor(module)


def test_no_import_runs_up_the_floors():
    known = modules()
    upward = [
        f"{known[module].relative_to(ROOT.parent)}:{line}: {describe(module)} imports {describe(target)}"
        for module, targets in graph().items()
        for target, line in targets
        if floor(target) > floor(module)
    ]
    assert not upward, f"{len(upward)} import(s) run up the floors:\n" + "\n".join(upward)


def test_text_imports_nothing_from_training():
    text = [
        f"{module} imports {target} (line {line})"
        for module, targets in graph().items()
        if module.startswith(f"{PACKAGE}.text")
        for target, line in targets
        if target.startswith(f"{PACKAGE}.training")
    ]
    assert not text, "\n".join(text)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``edges``: each strongly connected component of more than one module (or a
    module importing itself), as the component's modules (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))
    return found


def test_the_cycle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    imported = graph()
    edges = {module: {target for target, _ in targets} for module, targets in imported.items()}
    circles = []
    for component in cycles(edges):
        members = set(component)
        lines = [
            f"  {module} imports {target} (line {line})"
            for module in component
            for target, line in imported[module]
            if target in members
        ]
        circles.append(" <-> ".join(component) + "\n" + "\n".join(lines))
    assert not circles, f"{len(circles)} import circle(s):\n" + "\n".join(circles)
