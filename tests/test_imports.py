"""The core library's shape: importing all of it loads no prefect module, and no two of its modules
import each other (directly or round a longer loop), at module level or inside a function."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import selffeed

PACKAGE = Path(selffeed.__file__).parent


def test_selffeed_imports_no_prefect():
    modules = [m.name for m in pkgutil.walk_packages(selffeed.__path__, "selffeed.")]
    assert "selffeed.loop.stages" in modules and "selffeed.filtering.filters" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def import_graph() -> dict[str, set[str]]:
    """Module -> the selffeed modules it imports anywhere in its source (``from pkg import submodule``
    counts as importing the submodule, not the package)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                deps.update(subs or {node.module})
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def cycle_from(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def walk(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := walk(d, path + [d])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := walk(m, [m])):
            return found
    return None


def test_no_import_cycle_in_selffeed():
    graph = import_graph()
    assert {"selffeed.loop.stages", "selffeed.run.keys", "selffeed.recipes.text"} <= graph.keys()
    assert "selffeed.run.layout" in graph["selffeed.loop.stages"]
    assert cycle_from(graph) is None, " -> ".join(cycle_from(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}) is None
