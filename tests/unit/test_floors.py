"""Floors: each package of `cocoon` imports only packages on its own floor or below, and no two import each other.

The graph is read from the source with `ast` (every import statement, inside functions and `TYPE_CHECKING`
blocks too), so it sees what a run might never reach. A new package must be given a floor here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "cocoon"

# Low to high. A unit is a subpackage or a top-level module of cocoon ("cocoon" itself is its __init__.py).
FLOORS: list[set[str]] = [
    {"cocoon", "core"},
    {"fsutil", "config", "observe", "ohttp"},
    {"ledger"},
    {"attest"},
    {"ratls", "seal"},
    {"wire"},
    {"openai"},
    {"inference", "media"},
    {"runtime", "nodekeys", "keyclient", "discovery"},
    {"client", "proxy", "worker", "chain", "keys"},
    {"relay", "sdk"},  # built on the client: the relay pays as a client of record, the SDK is a client in-process
    {"cli", "ledger_cli", "log_cli", "receipt_cli", "localnet", "hosts", "bench", "status", "__main__"},
]
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def _unit(module: str) -> str | None:
    """The floor unit of a dotted module name inside cocoon, or None for other packages."""
    parts = module.split(".")
    if parts[0] != "cocoon":
        return None
    return parts[1] if len(parts) > 1 else "cocoon"


def _module_name(path: Path) -> str:
    parts = ("cocoon", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every cocoon module `path` imports, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from cocoon import errors` imports the module cocoon.errors, not the package's __init__
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if (ROOT.parent / base.replace(".", "/") / alias.name).with_suffix(".py").exists()
                         or (ROOT.parent / base.replace(".", "/") / alias.name).is_dir())
    return found


def import_graph() -> dict[str, dict[str, set[str]]]:
    """unit -> imported unit -> the files that import it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        source = _unit(_module_name(path))
        assert source is not None
        edges = graph.setdefault(source, {})
        for module in _imports(path):
            target = _unit(module)
            if target is None or target == source:
                continue
            if target == "cocoon" and module != "cocoon":
                continue  # `from cocoon import x` names the submodule x, counted above
            edges.setdefault(target, set()).add(str(path.relative_to(ROOT)))
    return graph


def _cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(unit: str) -> None:
        index[unit] = low[unit] = len(index)
        stack.append(unit)
        on_stack.add(unit)
        for target in graph.get(unit, {}):
            if target not in index:
                visit(target)
                low[unit] = min(low[unit], low[target])
            elif target in on_stack:
                low[unit] = min(low[unit], index[target])
        if low[unit] == index[unit]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == unit:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for unit in sorted(graph):
        if unit not in index:
            visit(unit)
    return found


GRAPH = import_graph()


def test_graph_sees_the_imports() -> None:
    # guards the reader itself: known edges of today's code must be found
    assert "core" in GRAPH["wire"] and "ledger" in GRAPH["attest"] and "attest" in GRAPH["ratls"]
    assert "localnet" in GRAPH["bench"]


def test_graph_sees_imports_inside_functions() -> None:
    # a lazy import (inside a function, run only when called) is an import all the same: cli.py imports the roles
    # only inside its commands, and those edges must be in the graph
    cli = ROOT / "cli.py"
    top_level = {node.module for node in ast.parse(cli.read_text()).body if isinstance(node, ast.ImportFrom)}
    assert not any(module and module.startswith("cocoon.proxy") for module in top_level)
    assert "cli.py" in GRAPH["cli"]["proxy"]


def test_every_unit_has_a_floor() -> None:
    missing = sorted(set(GRAPH) - set(FLOOR))
    assert not missing, f"give these a floor in FLOORS: {missing}"


def test_core_imports_nothing_of_cocoon() -> None:
    assert GRAPH["core"] == {} and GRAPH["cocoon"] == {}


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize("unit", sorted(GRAPH))
def test_imports_go_down(unit: str) -> None:
    upward = {target: sorted(files) for target, files in GRAPH[unit].items()
              if FLOOR.get(target, len(FLOORS)) > FLOOR.get(unit, -1)}
    assert not upward, f"{unit} (floor {FLOOR.get(unit)}) imports higher floors: {upward}"


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b": {"x"}}, "b": {"c": {"y"}}, "c": {"a": {"z"}}, "d": {"a": {"w"}}}
    assert _cycles(graph) == [["a", "b", "c"]]
