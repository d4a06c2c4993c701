"""The protocol registry, the config's device union and the layering rules between them.

A protocol is one folder under drivers/ plus one line in drivers.registry; the core
(collector/) knows no protocol. These tests keep it so.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest

from collector.config import Config, parse_config
from common.errors import ConfigError
from drivers.base import DeviceBase
from drivers.registry import REGISTRY, driver_class
from tests.conftest import REPO


def _union_members() -> tuple[type[Any], ...]:
    annotation = Config.model_fields["devices"].annotation
    (item,) = get_args(annotation)  # list[DeviceConfig]
    assert get_origin(item) is Annotated
    union = get_args(item)[0]
    assert get_origin(union) is Union
    return get_args(union)


def test_the_config_union_is_the_registry() -> None:
    members = _union_members()
    assert set(members) == {p.model for p in REGISTRY.values()}
    for protocol, entry in REGISTRY.items():
        literal = entry.model.model_fields["protocol"].annotation
        assert get_origin(literal) is Literal
        assert get_args(literal) == (protocol,), f"{entry.model.__name__} is not {protocol!r}"
        assert issubclass(entry.model, DeviceBase)


def test_every_registered_driver_can_be_loaded() -> None:
    for protocol in REGISTRY:
        cls = driver_class(protocol)
        assert callable(cls)
        for method in ("connect", "read", "close", "describe", "details"):
            assert hasattr(cls, method), f"{protocol}: driver has no {method}"


def test_an_unknown_protocol_names_the_registered_ones() -> None:
    text = "collector: {id: c, site: s, line: l}\nbuffer: {path: /tmp/x.db}\n"
    text += "devices:\n  - {name: d, protocol: profinet}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    message = str(caught.value)
    assert "c.yaml:4: devices[0].protocol: 'profinet' is not a protocol" in message
    for protocol in REGISTRY:
        assert protocol in message


def _modules(root: str) -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / root).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_driver_imports_the_core_config() -> None:
    for name, path in _modules("drivers").items():
        bad = {m for m in _imports(path, False) if m.startswith("collector.config")}
        assert not bad, f"{name} imports {sorted(bad)}: use common.config"


def test_the_core_names_no_protocol_device_class() -> None:
    classes = {p.model.__name__ for p in REGISTRY.values()}
    pattern = re.compile(r"\b(" + "|".join(sorted(classes)) + r")\b")
    for name, path in _modules("collector").items():
        found = pattern.findall(path.read_text(encoding="utf-8"))
        assert not found, f"{name} names {sorted(set(found))}"


def _edges(path: Path, modules: set[str]) -> set[str]:
    """The project modules a module imports at its top level. ``from pkg import mod`` of a
    submodule is an edge to the submodule only."""
    edges: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules
            edges |= submodules or {node.module}
    return edges & modules


def test_no_import_cycle_at_module_level() -> None:
    modules = {
        k: v
        for root in ("collector", "drivers", "store", "quality")
        for k, v in _modules(root).items()
    }
    graph = {name: _edges(path, set(modules)) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name)


def test_each_protocol_library_has_one_importer_and_its_simulator() -> None:
    """pymodbus, asyncua and pyserial are imported by their package's driver.py (and the
    simulator, sim.py, which is not a driver) and nowhere else in the product; OPC-UA's driver
    keeps its value mapping, subscription handler and browsing in modules of their own, which
    speak asyncua's types (only the driver makes clients): asyncua churn stays in that package."""
    libraries = {
        "pymodbus": "drivers.modbus",
        "asyncua": "drivers.opcua",
        "serial": "drivers.serial",
        "serial_asyncio_fast": "drivers.serial",
    }
    allowed = {pkg: {f"{pkg}.driver", f"{pkg}.sim"} for pkg in libraries.values()}
    allowed["drivers.opcua"] |= {"drivers.opcua.values", "drivers.opcua.subscription"}
    allowed["drivers.opcua"] |= {"drivers.opcua.browse"}
    for root in ("collector", "drivers", "store", "quality"):
        for name, path in _modules(root).items():
            for module in _imports(path, False):
                package = libraries.get(module.split(".")[0])
                if package is not None:
                    assert name in allowed[package], f"{name} imports {module}"
