"""The import rules of docs/architecture.md, held against every import in the packages.

The layers come from the ```layers block of that page (top first); every ``import`` and
``from ... import`` of the packages, lazy ones inside functions included, is read with
``ast``. A module may import its own layer and those below it, and no modules may import
each other in a circle.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGES = ("streamrec", "flows", "online_models", "serving", "loadtest", "cli")
RUNTIME = ("streamrec", "flows", "online_models", "serving")


def documented_layers() -> list[str]:
    """The layer names of docs/architecture.md, bottom first."""
    page = (REPO_ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", page, flags=re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [line.strip() for line in reversed(block.group(1).splitlines()) if line.strip()]


def module_files() -> dict[str, Path]:
    """Every module of the packages by dotted name (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, module: str, known: Iterable[str]) -> set[str]:
    """The modules of ``known`` that ``module`` (at ``path``) imports, anywhere in it."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            # The longest known module the name starts with: ``a.b.func`` -> ``a.b``.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def layer_of(module: str, layers: list[str]) -> str | None:
    """The longest layer name that is ``module`` or a package above it."""
    matches = [layer for layer in layers if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len, default=None)


def layer_violations(graph: Mapping[str, set[str]], layers: list[str]) -> list[str]:
    """Each import of a module from a layer above the importer's, as ``a -> b``."""
    rank = {layer: position for position, layer in enumerate(layers)}
    problems = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if own is None or theirs is None:
                continue
            if rank[theirs] > rank[own]:
                problems.append(f"{module} ({own}) -> {target} ({theirs})")
    return problems


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other in a loop (Tarjan's strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# --- the rules on the code ------------------------------------------------------------


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert cycles(import_graph()) == []


def test_every_import_runs_down_the_documented_layers() -> None:
    assert layer_violations(import_graph(), documented_layers()) == []


def test_every_module_is_in_a_documented_layer() -> None:
    layers = documented_layers()
    unplaced = [
        module
        for module, path in module_files().items()
        if layer_of(module, layers) is None
        and not (path.name == "__init__.py" and not import_graph()[module])
    ]
    assert unplaced == []


def test_the_runtime_never_imports_load_tests_benchmarks_or_the_cli() -> None:
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module.split(".")[0] in RUNTIME
        for target in targets
        if target.split(".")[0] in ("loadtest", "cli")
    )
    assert upward == []


# --- the checker itself ---------------------------------------------------------------


def test_the_checker_finds_a_circle_and_an_upward_import() -> None:
    graph = {"low.a": {"low.b"}, "low.b": {"low.a"}, "high.c": {"low.a"}, "low.d": {"high.c"}}
    assert cycles(graph) == [["low.a", "low.b"]]
    assert layer_violations(graph, ["low", "high"]) == ["low.d (low) -> high.c (high)"]


def test_relative_and_lazy_imports_are_read(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text("from . import sibling\n\ndef f():\n    from pkg.other import thing\n")
    found = imports_of(module, "pkg.mod", {"pkg.mod", "pkg.sibling", "pkg.other"})
    assert found == {"pkg.sibling", "pkg.other"}
