"""Protocol drivers. The registry below is the only place that maps a config ``protocol`` to a
driver class; each driver module is the only importer of its protocol library."""

from __future__ import annotations

from collections.abc import Callable

from collector.config import DeviceConfig
from collector.driver import Driver
from drivers.modbus import ModbusTcpDriver

REGISTRY: dict[str, Callable[[DeviceConfig], Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
}


def create_driver(device: DeviceConfig) -> Driver:
    return REGISTRY[device.protocol](device)
