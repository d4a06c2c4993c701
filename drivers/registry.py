"""The one place that maps a config's ``protocol`` to its config model and its driver.

A new protocol is one folder under drivers/ (config models on drivers.base.DeviceBase, a
driver that fulfils drivers.base.Driver) and one line in :data:`REGISTRY`. The config's
device union (collector.config.model) is built from this table.

Drivers are imported when a device of theirs is created, not before: the config models import
no protocol library, so a line PC with only Modbus devices never loads the OPC-UA stack (tens
of MB of memory).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.base import DeviceBase, Driver
from drivers.modbus.config import ModbusRtuDevice, ModbusTcpDevice
from drivers.opcua.config import OpcUaDevice
from drivers.serial.config import BarcodeScannerDevice, SerialAsciiDevice


@dataclass(frozen=True)
class Protocol:
    #: The device's config model; its ``protocol`` Literal is the key in REGISTRY.
    model: type[DeviceBase]
    #: "module:class" of the driver; the class takes the model (and an optional clock).
    driver: str


REGISTRY: dict[str, Protocol] = {
    "modbus_tcp": Protocol(ModbusTcpDevice, "drivers.modbus.driver:ModbusTcpDriver"),
    "modbus_rtu": Protocol(ModbusRtuDevice, "drivers.modbus.driver:ModbusRtuDriver"),
    "serial_ascii": Protocol(SerialAsciiDevice, "drivers.serial.driver:SerialAsciiDriver"),
    "barcode_scanner": Protocol(BarcodeScannerDevice, "drivers.serial.driver:BarcodeScannerDriver"),
    "opcua": Protocol(OpcUaDevice, "drivers.opcua.driver:OpcUaDriver"),
}


def driver_class(protocol: str) -> Callable[[Any], Driver]:
    module, _, name = REGISTRY[protocol].driver.partition(":")
    cls: Callable[[Any], Driver] = getattr(importlib.import_module(module), name)
    return cls


def create_driver(device: DeviceBase) -> Driver:
    return driver_class(device.protocol)(device)
