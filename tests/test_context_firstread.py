"""Readings that wait for their station's first serial read (collector.context.firstread):
pure logic, no I/O. The live case (an asyncua rack in subscription mode) is in
tests/test_first_serial_read.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import Config, load_config
from collector.context.firstread import FirstReadHold, HoldLimits
from collector.context.tagging import StationContext
from common.errors import ConfigError
from contract.records import Context, Reading
from tests.test_context import config as scanner_config


def modbus_config(**tagging: Any) -> Config:
    return Config.model_validate(modbus_raw(**tagging))


def modbus_raw(**tagging: Any) -> dict[str, Any]:
    """A tester that shows the serial in its registers (libmodbus style), a probe of the same
    station, and a second station; the serial comes in its own request, after the leak's."""
    modbus = {"protocol": "modbus_tcp", "host": "127.0.0.1", "station": "ft-1"}
    return {
        "collector": {"id": "pc1", "site": "s", "line": "l"},
        "buffer": {"path": "/tmp/unused.db"},
        "tagging": tagging,
        "stations": [
            {
                "name": "ft-1",
                "operation": "functional-test",
                "serial_source": {"device": "tester", "tag": "serial"},
            },
            {
                "name": "ft-2",
                "operation": "functional-test",
                "serial_source": {"device": "other", "tag": "serial"},
            },
        ],
        "devices": [
            {
                **modbus,
                "name": "tester",
                "tags": [
                    {"name": "leak", "table": "holding_register", "address": 0},
                    {
                        "name": "serial",
                        "table": "holding_register",
                        "address": 10,
                        "type": "string",
                        "count": 4,
                    },
                ],
            },
            {
                **modbus,
                "name": "probe",
                "tags": [{"name": "temp", "table": "holding_register", "address": 0}],
            },
            {
                **modbus,
                "name": "other",
                "station": "ft-2",
                "tags": [
                    {
                        "name": "serial",
                        "table": "holding_register",
                        "address": 10,
                        "type": "string",
                        "count": 4,
                    }
                ],
            },
        ],
    }


class Out:
    """What the hold hands on: (device, reading, context) in order."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Reading, Context]] = []

    def submit(self, device: str, readings: Sequence[Reading], contexts: list[Context]) -> None:
        assert len(readings) == len(contexts)
        self.items += [(device, r, c) for r, c in zip(readings, contexts, strict=True)]

    def serials(self) -> list[tuple[str, str | None]]:
        return [(r.tag, c.unit_serial) for _, r, c in self.items]


def make(config: Config, now: list[float], limits: HoldLimits | None = None) -> tuple[
    StationContext, FirstReadHold, Out
]:  # fmt: skip
    context = StationContext(config.stations, config.devices, clock=lambda: now[0])
    out = Out()
    t = config.tagging
    limits = limits or HoldLimits(t.first_serial_wait_s, t.first_serial_max_readings)
    return context, FirstReadHold(context, out.submit, limits, lambda: now[0]), out


def test_a_reading_read_before_the_serial_in_the_same_poll_gets_its_unit() -> None:
    now = [1000.0]
    _, hold, out = make(modbus_config(), now)
    # The leak's request was answered before the serial's: by its time, no serial was read.
    hold.sink("tester", [Reading(999.5, "leak", 5), Reading(999.7, "serial", "SN-1")])
    hold.sink("probe", [Reading(1000.5, "temp", 21)])
    assert out.serials() == [("leak", "SN-1"), ("serial", "SN-1"), ("temp", "SN-1")]
    assert out.items[0][1].ts == 999.5  # the reading keeps its own time
    assert (hold.held_total, hold.released_total, hold.released_untagged_total) == (2, 2, 0)


def test_readings_of_another_device_wait_for_the_serial_device() -> None:
    now = [1000.0]
    _, hold, out = make(modbus_config(), now)
    hold.sink("probe", [Reading(999.0, "temp", 20)])
    hold.sink("probe", [Reading(999.5, "temp", 21)])
    assert out.items == []  # waiting
    hold.sink("tester", [Reading(1000.0, "serial", ""), Reading(1000.0, "leak", 1)])
    # An empty serial: no unit was there; released all the same, not at a bound.
    assert out.serials() == [("temp", None), ("temp", None), ("serial", None), ("leak", None)]
    assert [r.value for _, r, _ in out.items][:2] == [20, 21]  # in arrival order
    assert (hold.released_total, hold.released_untagged_total) == (4, 0)


def test_after_a_restart_the_first_read_decides_over_the_stored_unit() -> None:
    """The unit stored by the last run left while the collector was down: the readings
    before the first read belong to the unit it shows, not to the stored one."""
    now = [1000.0]
    first, hold, out = make(modbus_config(), now)
    hold.sink("tester", [Reading(1000.0, "serial", "OLD-1"), Reading(1000.0, "leak", 1)])
    snapshot = first.snapshot()
    now[0] = 2000.0
    context, hold, out = make(modbus_config(), now)
    context.restore(*snapshot)
    hold.sink("probe", [Reading(1999.0, "temp", 22)])
    hold.sink("tester", [Reading(2000.5, "serial", "NEW-2"), Reading(2000.5, "leak", 2)])
    assert out.serials() == [("temp", "NEW-2"), ("serial", "NEW-2"), ("leak", "NEW-2")]
    # The same serial as stored: no new unit, the stored one tags what waited.
    context, hold, out = make(modbus_config(), now)
    context.restore(*snapshot)
    hold.sink("probe", [Reading(1999.0, "temp", 22)])
    hold.sink("tester", [Reading(2000.5, "serial", "OLD-1")])
    assert out.serials() == [("temp", "OLD-1"), ("serial", "OLD-1")]
    assert context.status()["ft-1"]["attempt"] == 1


def test_a_scanned_serial_holds_nothing() -> None:
    """A scanner says nothing until a unit comes: readings before the first scan have no
    unit, and go out at once."""
    now = [1000.0]
    _, hold, out = make(scanner_config(), now)
    hold.sink("tester", [Reading(1000.0, "leak", 1.0)])
    assert out.serials() == [("leak", None)]
    assert hold.status()["waiting_stations"] == []
    assert hold.held_total == 0


def test_a_held_reading_waits_first_serial_wait_s_at_most() -> None:
    now = [1000.0]
    _, hold, out = make(modbus_config(first_serial_wait_s=5), now)
    now[0] = 1003.0  # a slow connect: the wait starts with the first held reading
    hold.sink("probe", [Reading(1003.0, "temp", 20)])
    now[0] = 1007.9
    hold.tick()
    assert out.items == []
    now[0] = 1008.0
    hold.tick()
    assert out.serials() == [("temp", None)]
    assert (hold.released_untagged_total, hold.untagged_stations) == (1, ["ft-1"])
    hold.sink("probe", [Reading(1009.0, "temp", 21)])  # ft-1 waits no longer
    assert out.serials()[-1] == ("temp", None)
    # ft-2's device delivered nothing: it waits on, at no cost, for its first read.
    assert hold.status()["waiting_stations"] == ["ft-2"]
    now[0] = 2000.0
    hold.tick()
    hold.sink("other", [Reading(2000.0, "serial", "SN-9")])
    assert out.serials()[-1] == ("serial", "SN-9")
    assert (hold.released_total, hold.status()["waiting_stations"]) == (1, [])


def test_past_max_readings_the_station_that_waited_longest_goes_first() -> None:
    now = [1000.0]
    _, hold, out = make(modbus_config(), now, HoldLimits(wait_s=30, max_readings=3))
    hold.sink("probe", [Reading(1000.0, "temp", 20), Reading(1000.0, "temp", 21)])
    now[0] = 1001.0
    hold.sink("other", [Reading(1001.0, "serial", "SN-2")])  # ft-2 read: nothing held
    hold.sink("tester", [Reading(1001.0, "leak", 1), Reading(1001.0, "leak", 2)])
    assert [r.value for _, r, _ in out.items] == ["SN-2", 20, 21, 1, 2]
    assert (hold.holding, hold.released_untagged_total) == (0, 4)


def test_a_stop_releases_what_is_held() -> None:
    now = [1000.0]
    _, hold, out = make(modbus_config(), now)
    hold.sink("probe", [Reading(1000.0, "temp", 20)])
    hold.release_all("the collector stops")
    assert out.serials() == [("temp", None)]
    assert hold.holding == 0


def test_a_reload_keeps_what_waits_and_what_was_read() -> None:
    now = [1000.0]
    config = modbus_config()
    _, hold, out = make(config, now)
    hold.sink("other", [Reading(1000.0, "serial", "SN-2")])
    hold.sink("probe", [Reading(1000.0, "temp", 20)])
    context = StationContext(config.stations, config.devices, clock=lambda: now[0])
    hold.set_context(context)
    assert hold.status()["waiting_stations"] == ["ft-1"]  # ft-2 was read before the reload
    hold.sink("tester", [Reading(1001.0, "serial", "SN-1")])
    assert out.serials() == [("serial", "SN-2"), ("temp", "SN-1"), ("serial", "SN-1")]


@pytest.mark.parametrize(
    ("tagging", "problem"),
    [
        ({"first_serial_wait_s": 0}, "tagging.first_serial_wait_s"),
        ({"first_serial_max_readings": 0}, "tagging.first_serial_max_readings"),
        ({"first_serial_wait": 5}, "tagging.first_serial_wait"),
    ],
)
def test_the_bounds_are_checked_at_load(
    tmp_path: Path, tagging: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(modbus_raw(**tagging)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p for p in caught.value.problems if p.startswith(f"{path}:")
            and problem in p], caught.value.problems  # fmt: skip
