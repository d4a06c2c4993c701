"""Station context: which station, operation and unit serial a reading belongs to.

This is the spine's minimal model: a station's operation comes from its config and its current
unit serial from one device tag (``serial_source``). The serial is updated from a poll *before*
that poll's readings are tagged, and readings are tagged in the order they were read, so a
reading taken before the serial changed never gets the new serial. The full unit lifecycle
(verdicts, attempts, unit records) replaces this module later behind the same ``tag`` call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from collector.config import DeviceConfig, StationConfig
from collector.reading import Quality, Reading, Record

log = logging.getLogger(__name__)


class StationContext:
    def __init__(self, stations: Sequence[StationConfig], devices: Sequence[DeviceConfig]) -> None:
        self._station_of = {d.name: d.station for d in devices}
        self._operation = {s.name: s.operation for s in stations}
        self._serial_source = {
            (s.serial_source.device, s.serial_source.tag): s.name
            for s in stations
            if s.serial_source is not None
        }
        self._serial: dict[str, str | None] = {s.name: None for s in stations}

    def current_serial(self, station: str) -> str | None:
        return self._serial.get(station)

    def tag(self, device: str, readings: Sequence[Reading]) -> list[Record]:
        station = self._station_of[device]
        for reading in readings:
            source = self._serial_source.get((device, reading.tag))
            if source is not None and reading.quality is Quality.GOOD:
                self._set_serial(source, reading.value)
        serial = self._serial.get(station) if station is not None else None
        operation = self._operation.get(station) if station is not None else None
        return [Record(r, station, device, serial, operation) for r in readings]

    def _set_serial(self, station: str, value: object) -> None:
        # An empty serial register means "no unit at the station".
        serial = str(value).strip() or None if value is not None else None
        if serial != self._serial[station]:
            log.info("station %s: unit %s -> %s", station, self._serial[station], serial)
            self._serial[station] = serial
