from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    REPO,  # noqa: F401 - test modules import it from here
    Mosquitto,
    mosquitto_binary,
)
from tests.opcua_fixtures import pki, rack, secure_rack  # noqa: F401 - the OPC-UA tests' servers
from tests.store_fixtures import db_url, postgres  # noqa: F401 - fixtures of the store's tests

#: Tests that kill or restart brokers and stores, by group: each group runs one test at a time
#: on one worker (the two groups side by side: one group in a row would be the tier's longest
#: path).
FAULT_GROUPS = {
    "faults": ("tests/faults/",),
    "handover": (
        "tests/test_store_delivery.py",
        "tests/test_store_reconnect.py",
        "tests/test_store_faults.py",
    ),
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault tests (tests/faults/: brokers killed, disks filled, links cut; the store
    hand-over's broker restarts) run in xdist groups, one after the other on one worker each,
    so that two of them never starve each other of the machine's two cores (their bounds are
    for a fault's recovery, not for a crowded CPU)."""
    for item in items:
        for group, prefixes in FAULT_GROUPS.items():
            if item.nodeid.startswith(prefixes):
                item.add_marker(pytest.mark.xdist_group(group))
        # A long store test's PostgreSQL case: the SQLite case keeps the behaviour in the
        # default tier, the store's other PostgreSQL tests keep the dialect there.
        callspec = getattr(item, "callspec", None)
        if (
            item.get_closest_marker("slow_on_postgresql") is not None
            and callspec is not None
            and callspec.params.get("db_url") == "postgresql"
        ):
            item.add_marker(pytest.mark.slow)


def require_mosquitto() -> None:
    """Broker tests need the real mosquitto: fail on CI, skip (saying why) elsewhere."""
    if mosquitto_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed; .ci/run must install it")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto) - broker tests skipped")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    require_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
async def modbus_server() -> AsyncIterator[SimulatedModbusServer]:
    server = SimulatedModbusServer(unit_ids=[1, 2])
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def opened() -> AsyncIterator[Any]:
    """Connect a driver for the test; every driver opened this way is closed afterwards."""
    drivers: list[Any] = []

    async def open_(driver: Any) -> Any:
        await driver.connect()
        drivers.append(driver)
        return driver

    yield open_
    for driver in drivers:
        await driver.close()
