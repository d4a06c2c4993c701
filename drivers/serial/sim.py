"""A simulated barcode scanner on a pseudo-terminal, for the demo (collector.demo) and tests.

A simulator, not a driver: the collector opens :attr:`SimulatedScanner.port` with its serial
driver as it would a real scanner; the driver never imports this module.
"""

from __future__ import annotations

import os
import tty


class SimulatedScanner:
    """A barcode scanner on a pseudo-terminal: the collector opens ``port``; ``scan`` types."""

    def __init__(self, prefix: str = "]C1", suffix: str = "\r") -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        # AIM symbology prefix and CR suffix, as shipped.
        self._prefix, self._suffix = prefix, suffix

    def scan(self, code: str) -> None:
        os.write(self._master, f"{self._prefix}{code}{self._suffix}".encode())

    def close(self) -> None:
        os.close(self._master)
        os.close(self._slave)
