"""The package's layers, read from its source: every module sits in one layer, imports only its own
layer or lower ones (function-level imports included), Ray, Optuna and MLflow stay in the modules
that wrap them, and no two modules import each other, directly or around a loop.

A new module fails ``test_every_module_has_a_layer`` until it is placed in ``LAYERS`` (and in
docs/ARCHITECTURE.md, which draws the same layers).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "st_sweeps"

# lowest first; a module's layer is that of the longest prefix listed (``data`` covers ``data.base``)
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("", "errors", "registry", "config", "files", "seeding", "dist", "checkpoint", "flat_parameters",
                   "diagnostics", "plots", "report"),
    "math": ("sde", "truncation", "weighting", "objectives", "aux_prior", "gaussian_mixture", "effective_weight",
             "dequantization", "ode_solver", "ode_batched", "likelihood", "likelihood_fast", "likelihood_time",
             "likelihood_trace", "likelihood_settings", "sampling", "sample_quality", "networks", "ema", "inception_score", "fid",
             "gmm_quality", "data"),
    "experiment": ("digits_fd", "experiment", "evaluate", "metrics", "search_space"),
    "training": ("tracking", "trainer"),
    "distributed": ("ray_train", "train"),
    "applications": ("tune", "claims", "reproduce", "parity"),
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}
MATH_AND_BELOW = ("foundation", "math")

# third-party frameworks and the only modules allowed to import them
WRAPPED = {
    "mlflow": ("tracking",),
    "ray": ("ray_train", "tune", "claims.study"),
    "optuna": ("tune",),
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = module_names()


def layer_of(module: str) -> str | None:
    best: tuple[int, str] | None = None
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if module == prefix or (prefix and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), layer)
    return best[1] if best else None


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level third-party packages) that ``path`` imports anywhere."""
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from st_sweeps import tune`` imports the module st_sweeps.tune
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target == "st_sweeps" or target.startswith("st_sweeps."):
                name = target.removeprefix("st_sweeps").lstrip(".")
                if name in MODULES:
                    ours.add(name)
            else:
                theirs.add(target.split(".")[0])
    return ours, theirs


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in MODULES if layer_of(m) is None)
    assert not unplaced, f"place these modules in LAYERS (and docs/ARCHITECTURE.md): {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    if layer_of(module) is None:
        pytest.skip("not placed in a layer (test_every_module_has_a_layer fails)")
    mine = RANK[layer_of(module)]
    upward = sorted(f"{dep} ({layer_of(dep)})" for dep in GRAPH[module][0]
                    if layer_of(dep) is not None and RANK[layer_of(dep)] > mine)
    assert not upward, f"{module} ({layer_of(module)}) imports upward: {upward}"


@pytest.mark.parametrize("framework", sorted(WRAPPED))
def test_frameworks_stay_in_their_wrappers(framework):
    allowed = WRAPPED[framework]
    users = sorted(m for m, (_, theirs) in GRAPH.items() if framework in theirs)
    outside = [m for m in users if not any(m == a or m.startswith(a + ".") for a in allowed)]
    assert users, f"no module imports {framework}: the rule is stale"
    assert not outside, f"{framework} imported outside {allowed}: {outside}"


def test_math_imports_no_trainer_tracking_or_frameworks():
    for module, (ours, theirs) in GRAPH.items():
        if layer_of(module) not in MATH_AND_BELOW:
            continue
        assert not {"trainer", "tracking", "ray_train", "tune"} & ours, module
        assert not {"ray", "mlflow", "optuna"} & theirs, module


def test_no_import_cycles():
    # importing a.b runs a's __init__ first, so importing a submodule of another package also
    # depends on that package's __init__ (a module's own package is already being imported)
    edges = {m: set(ours) | {p for dep in ours for p in _parents(dep) if not _within(m, p)}
             for m, (ours, _) in GRAPH.items()}
    cycles = [c for c in _strongly_connected(edges) if len(c) > 1]
    assert not cycles, f"modules that import each other (directly or around a loop): {cycles}"


def _within(module: str, package: str) -> bool:
    return package == "" or module == package or module.startswith(package + ".")


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]


def _strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively (the graph is small, but recursion depth is not our concern)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
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
                found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_loop():
    assert [c for c in _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) if len(c) > 1] == \
        [["a", "b", "c"]]


def test_importing_the_trainer_loads_no_ray_mlflow_or_optuna():
    code = ("import sys, st_sweeps.trainer, st_sweeps.evaluate, st_sweeps.experiment; "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
