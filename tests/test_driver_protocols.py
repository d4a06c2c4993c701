"""The driver protocols the poller checks after every read answer per class, and right."""

from __future__ import annotations

from collections import Counter

from drivers.base import CountsInputErrors
from drivers.modbus.driver import ModbusTcpDriver
from drivers.serial.driver import SerialAsciiDriver


class Counts:
    def take_input_errors(self) -> Counter[str]:
        return Counter()


class Silent:
    pass


def test_counts_input_errors_is_answered_by_the_class_of_each_driver() -> None:
    serial = SerialAsciiDriver.__new__(SerialAsciiDriver)
    modbus = ModbusTcpDriver.__new__(ModbusTcpDriver)
    # Twice each, in both orders: the second answer comes from the per-class cache and must
    # be the one for that class, not for the class asked before it.
    for _ in range(2):
        assert isinstance(serial, CountsInputErrors)
        assert not isinstance(modbus, CountsInputErrors)
        assert isinstance(Counts(), CountsInputErrors)
        assert not isinstance(Silent(), CountsInputErrors)
    for _ in range(2):
        assert not isinstance(Silent(), CountsInputErrors)
        assert isinstance(Counts(), CountsInputErrors)
