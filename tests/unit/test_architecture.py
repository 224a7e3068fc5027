"""The arrows between the packages, read from the source with ``ast`` (nothing is imported):
`shared` depends on nobody, `cloud` and `edge` never on each other nor on the simulator, the
simulator never on the edge, only `demo/` (and the `smartfarm` command) wires them all; AI and
notifications never reach into the job queue that runs them; and no first-party import cycles.

Every import counts, including ones inside functions and under ``TYPE_CHECKING``: a lazy or
type-only import is still an arrow a reader has to follow.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "edge", "cloud", "firmware_sim", "demo")
TOP_MODULES = ("smartfarm_cli",)

# package → the first-party packages it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "edge": {"shared"},
    "cloud": {"shared"},
    "firmware_sim": {"shared"},
    "demo": {"shared", "edge", "cloud", "firmware_sim"},
    "smartfarm_cli": {"shared", "edge", "cloud", "firmware_sim", "demo"},
}
# (importer prefix, forbidden prefix): arrows inside a package that must not exist.
FORBIDDEN_WITHIN = [
    ("cloud.ai", "cloud.jobs"),
    ("cloud.notify", "cloud.jobs"),
]


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {name: ROOT / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _owner(name: str) -> str | None:
    """The first-party module ``name`` refers to (a module, or a name inside one)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """First-party modules ``module`` imports, with the line."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the submodule; `from mod import name` the module.
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _owner(name)
            if target is not None and target != module:
                yield target, node.lineno


GRAPH: dict[str, dict[str, int]] = {
    module: dict(_imported(module, path)) for module, path in MODULES.items()
}


def test_the_graph_sees_the_packages() -> None:
    # A walker that found nothing would pass every rule below.
    assert {"shared.models", "edge.app", "cloud.app", "firmware_sim.farm", "demo.with_cloud"} <= (
        GRAPH.keys()
    )
    assert "edge.ingest" in GRAPH["edge.app"]
    assert {"cloud.app", "edge.app", "firmware_sim.farm"} <= GRAPH["demo.with_cloud"].keys()


def _top(module: str) -> str:
    return module.split(".")[0]


def test_packages_import_only_what_they_may() -> None:
    wrong = [
        f"{module}:{line} imports {target}"
        for module, targets in GRAPH.items()
        for target, line in targets.items()
        if _top(target) != _top(module) and _top(target) not in ALLOWED[_top(module)]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("importer", "forbidden"), FORBIDDEN_WITHIN)
def test_no_arrow_within_a_package_that_points_the_wrong_way(importer: str,
                                                             forbidden: str) -> None:
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    wrong = [
        f"{module}:{line} imports {target}"
        for module, targets in GRAPH.items() if under(module, importer)
        for target, line in targets.items() if under(target, forbidden)
    ]
    assert not wrong, "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_first_party_modules() -> None:
    # A package's __init__ importing its own submodules (a re-export) is not a cycle by itself;
    # a submodule importing back through its package's __init__ is.
    cycles = _cycles({module: set(targets) for module, targets in GRAPH.items()})
    assert not cycles, "\n".join(" ↔ ".join(cycle) for cycle in cycles)
