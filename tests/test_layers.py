"""Layers point one way (docs/development.md): datasets/ imports nothing from algorithms/ or sweeps/, algorithms/
nothing from sweeps/; and no two modules import each other at load time. Read from the source with `ast`, so an
import inside a function (a lazy one) counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("datasets", "algorithms", "sweeps")        # each may import the ones before it, never one after


def imports(source: str, package: str, lazy: bool = True) -> list[tuple[int, str]]:
    """(line, imported module) of every import of an `offline_sweeps` module in `source`, a module of the
    subpackage `package` ("datasets", ...), relative imports resolved; `lazy=False`: only those run when the
    module loads (not inside a function, nor under `if TYPE_CHECKING:`)."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    if not lazy:
        for node in ast.walk(tree):
            inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            type_checking = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            if inside_function or type_checking:
                skipped |= {id(child) for child in ast.walk(node) if child is not node}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("offline_sweeps.")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(["offline_sweeps", package][:3 - node.level] + ([module] if module else []))
            if not module.startswith("offline_sweeps"):
                continue
            if node.module is None or module == "offline_sweeps":      # `from .. import sweeps`: modules by name
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return sorted(found)


def modules() -> dict[str, Path]:
    """{"offline_sweeps.datasets.builder": path, ...} for every module of the three subpackages."""
    return {f"offline_sweeps.{layer}.{path.stem}".removesuffix(".__init__"): path
            for layer in LAYERS for path in sorted((ROOT / layer).glob("*.py"))}


def test_the_scan_sees_lazy_relative_and_absolute_imports():
    source = ("from ..algorithms.sac import SAC\nfrom .. import sweeps\nimport offline_sweeps.sweeps.report\n"
              "from .buffer import TransitionBuffer\n\ndef later():\n    from ..sweeps import study\n\n"
              "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..algorithms.base import Learner\n")
    assert imports(source, "datasets") == [
        (1, "offline_sweeps.algorithms.sac"), (2, "offline_sweeps.sweeps"), (3, "offline_sweeps.sweeps.report"),
        (4, "offline_sweeps.datasets.buffer"), (7, "offline_sweeps.sweeps"),
        (11, "offline_sweeps.algorithms.base")]
    assert [module for _, module in imports(source, "datasets", lazy=False)] == [
        "offline_sweeps.algorithms.sac", "offline_sweeps.sweeps", "offline_sweeps.sweeps.report",
        "offline_sweeps.datasets.buffer"]
    assert imports("from . import buffer\n", "datasets") == [(1, "offline_sweeps.datasets.buffer")]


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_imports_a_layer_above_its_own(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    upward = [f"{path.relative_to(ROOT)}:{line} imports {module}"
              for name, path in modules().items() if name.split(".")[1] == layer
              for line, module in imports(path.read_text(), layer) if module.split(".")[1] in above]
    assert not upward, f"{layer}/ may import only {', '.join(LAYERS[:LAYERS.index(layer) + 1])}: " + "; ".join(upward)


def test_no_import_cycle_at_load_time():
    """A cycle among the imports that run when a module loads (lazy ones break a cycle on purpose and are left out)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = {module for _, module in imports(path.read_text(), name.split(".")[1], lazy=False)}
        # `from .x import y` also loads the package x lives in; only edges to our own modules count.
        graph[name] = sorted(t for t in targets if t in known and t != name)
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"
    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(cycles)
