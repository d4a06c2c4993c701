"""Protocol drivers. The registry below is the only place that maps a config ``protocol`` to a
driver class; each driver module is the only importer of its protocol library."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from collector.config import DeviceConfig
from collector.driver import Driver
from drivers.modbus import ModbusRtuDriver, ModbusTcpDriver
from drivers.opcua import OpcUaDriver
from drivers.serial import BarcodeScannerDriver, SerialAsciiDriver

# protocol -> driver class; each class takes its own config model (config.DeviceConfig).
REGISTRY: dict[str, Callable[[Any], Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
    "modbus_rtu": ModbusRtuDriver,
    "serial_ascii": SerialAsciiDriver,
    "barcode_scanner": BarcodeScannerDriver,
    "opcua": OpcUaDriver,
}


def create_driver(device: DeviceConfig) -> Driver:
    return REGISTRY[device.protocol](device)
