"""The allowed import directions between the top-level packages, and no import cycle between
modules: every import counts, at module level, inside a function (a lazy import) or under
``TYPE_CHECKING``, because each is a dependency a reader must follow and a cycle one of them
can close at run time.

    contract   the message contract: depends on nothing of ours (orjson only)
    common     what the collector and the store share: may use the contract
    quality    pure statistics: depends on nothing of ours
    drivers    one package per protocol + the driver contract: contract, common
    collector  the edge service: contract, common, drivers, quality (store: the CLI's dispatch)
    store      the central store: contract, common, quality; never the collector
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("contract", "common", "quality", "drivers", "collector", "store")

ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "common": {"contract"},
    "quality": set(),
    "drivers": {"contract", "common"},
    "collector": {"contract", "common", "drivers", "quality"},
    "store": {"contract", "common", "quality"},
}

#: Modules allowed one import beyond their package's rule, and why.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("collector.cli", "store"): "`collector store ...` dispatches to the store's CLI",
}

#: Third-party imports the contract may make: a consumer installs it with orjson alone.
CONTRACT_THIRD_PARTY = {"orjson"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module (of ours or not) that ``name`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from collector.context import serials` imports collector.context.serials
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return found


GRAPH: dict[str, set[str]] = {name: _imports(name, path) for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.partition(".")[0]


def test_the_modules_are_found() -> None:
    # A moved package that this test no longer sees would make every check below vacuous.
    assert {"contract.decode", "common.errors", "drivers.base", "store.ingest"} <= set(MODULES)
    assert len(MODULES) > 100


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_go_only_in_the_allowed_directions(package: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _top(module) == package
        for target in targets
        if _top(target) in PACKAGES
        and _top(target) != package
        and _top(target) not in ALLOWED[package]
        and (module, _top(target)) not in EXCEPTIONS
    )
    assert wrong == [], f"{package} may import only {sorted(ALLOWED[package])}"


def test_the_contract_needs_nothing_but_orjson() -> None:
    import sys

    stdlib = sys.stdlib_module_names
    third_party = sorted(
        {
            _top(target)
            for module, targets in GRAPH.items()
            if _top(module) == "contract"
            for target in targets
            if _top(target) not in PACKAGES and _top(target) not in stdlib
        }
    )
    assert set(third_party) <= CONTRACT_THIRD_PARTY, third_party


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), or a module that
    imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path: Path) -> None:
    # The check itself: a cycle closed by an import inside a function is one.
    graph: dict[str, set[str]] = defaultdict(set)
    graph.update({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert _cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from store.service import StoreService\n"
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    assert "store.service" in _imports("probe", path)


def test_starting_a_store_or_collector_command_loads_no_scipy() -> None:
    # scipy takes about 1.5 s to import: quality's statistics import it when they compute,
    # not when a protocol model or a service's modules are loaded.
    import subprocess
    import sys

    code = (
        "import sys, collector.cli, store.cli, store.service, store.api, store.report.protocol; "
        "print('scipy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"
