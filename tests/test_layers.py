"""The package's structure: imports point down the layers (no module or package cycle, imports inside
functions included), and moving code changes no result (the smoke profile's cell hashes and values)."""
from __future__ import annotations

import ast
import functools
import json
from pathlib import Path

import pytest

from bench.core.context import RunContext
from bench.core.profiles import PROFILES
from bench.registry import METHODS, TASKS
from bench.running.runner import plan, run_cells

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "tasks", "kernels")
FIXTURE = Path(__file__).parent / "fixtures" / "cell_hashes" / "smoke.json"


def modules() -> dict[str, Path]:
    files = [f for p in PACKAGES for f in (ROOT / p).rglob("*.py")]
    return {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f for f in files}


def imported(path: Path, package: str) -> set[str]:
    """Every module name a file imports, at module level or inside functions; not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


@functools.lru_cache(maxsize=1)
def graphs() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module graph, layer graph): a layer is a top-level module of bench, a sub-package of bench, or one of
    methods, tasks and kernels."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    def layer(name: str) -> str:
        parts = mods[name].relative_to(ROOT).parts
        return str(Path(*parts)) if parts[0] == "bench" and len(parts) == 2 else str(Path(*parts[:-1]))

    module_graph: dict[str, set[str]] = {m: set() for m in mods}
    layer_graph: dict[str, set[str]] = {layer(m): set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in filter(None, map(resolve, imported(path, package))):
            if target != name:
                module_graph[name].add(target)
                if layer(target) != layer(name):
                    layer_graph[layer(name)].add(layer(target))
    return module_graph, layer_graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    return next((found for v in sorted(graph) if v not in state and (found := visit(v))), None)


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_or_layer_imports_in_a_cycle():
    module_graph, layer_graph = graphs()
    assert "bench/core" in layer_graph and "bench/backbones" in layer_graph
    assert (found := cycle(module_graph)) is None, " -> ".join(found)
    assert (found := cycle(layer_graph)) is None, " -> ".join(found)


@pytest.mark.parametrize("low, high", [("bench/core", "bench/running"), ("methods", "bench/fitting"),
                                       ("tasks", "bench/running"), ("methods", "tasks"), ("bench/core", "methods")])
def test_a_lower_layer_never_reaches_a_higher_one(low, high):
    _, layer_graph = graphs()
    reached, todo = set(), [low]
    while todo:
        for nxt in layer_graph.get(todo.pop(), ()):
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    assert high not in reached, f"{low} reaches {high} through its imports"


def test_the_smoke_profile_plans_the_recorded_cells_and_scores_their_values(tmp_path, lite0):
    """Planned for every registered method and task: the same file names (so hashes) as recorded before the
    modules moved (fixtures/cell_hashes/MAKE.md); methods registered since add names, none may change."""
    recorded = json.loads(FIXTURE.read_text())
    context = RunContext(profile=PROFILES.get("smoke"), cache_dir=tmp_path / "cache", progress=False)
    cells = plan(METHODS.names(), TASKS.names(), "efficientnet_lite0", context, [0, 1])
    planned = {cell.filename(recipe) for cell, recipe in cells}
    assert set(recorded["planned"]) <= planned, sorted(set(recorded["planned"]) - planned)[:5]
    scored = [(c, r) for c, r in cells if c.filename(r) in recorded["scored"]]
    assert len(scored) == len(recorded["scored"]) == 8
    run_cells(scored, lite0, context, tmp_path / "run")
    for path in sorted((tmp_path / "run" / "cells").glob("*.json")):
        record = json.loads(path.read_text())
        assert record["status"] == "ok", record["message"]
        values = {m["metric"]: m["value"] for m in record["metrics"]}
        assert values == pytest.approx(recorded["scored"][path.name], rel=1e-5, abs=1e-7), path.name
