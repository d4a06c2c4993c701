"""Protocol drivers. The registry below is the only place that maps a config ``protocol`` to a
driver class; each driver module is the only importer of its protocol library.

Driver modules are imported when a device of theirs is configured, not before: a line PC with
only Modbus devices never loads the OPC-UA stack (tens of MB of memory).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from collector.config import DeviceConfig
from collector.driver import Driver

# protocol -> "module:class"; each class takes its own config model (config.DeviceConfig).
REGISTRY: dict[str, str] = {
    "modbus_tcp": "drivers.modbus:ModbusTcpDriver",
    "modbus_rtu": "drivers.modbus:ModbusRtuDriver",
    "serial_ascii": "drivers.serial:SerialAsciiDriver",
    "barcode_scanner": "drivers.serial:BarcodeScannerDriver",
    "opcua": "drivers.opcua:OpcUaDriver",
}


def driver_class(protocol: str) -> Callable[[Any], Driver]:
    module, _, name = REGISTRY[protocol].partition(":")
    cls: Callable[[Any], Driver] = getattr(importlib.import_module(module), name)
    return cls


def create_driver(device: DeviceConfig) -> Driver:
    return driver_class(device.protocol)(device)
