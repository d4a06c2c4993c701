"""Which resources made a unit (issue 27): a station's operator (a badge scanned on its
scanner, or given with the HTTP unit call) and its fixture, cavity and program tags go into
each unit record's ``resources``, with the values at the unit's start; pure logic, no I/O."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector.config import Config, load_config, parse_config
from collector.context.tagging import StationContext
from common.errors import ConfigError
from contract.decode import decode_units
from contract.encode import build_message, encode_unit, envelope, with_seq
from contract.records import Reading, UnitRecord
from tests.helpers import REPO


def config(**station: Any) -> Config:
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "health": {"token_env": "UNUSED_TOKEN"},  # the HTTP unit call needs one
            "buffer": {"path": "/tmp/unused.db"},
            "stations": [
                {
                    "name": "press-2",
                    "operation": "press-fit",
                    "serial_source": {"device": "scanner", "tag": "serial"},
                    "verdict": {"device": "plc", "tag": "result", "map": {1: "pass", 2: "fail"}},
                    **station,
                }
            ],
            "devices": [
                {
                    "name": "scanner",
                    "protocol": "barcode_scanner",
                    "port": "/dev/x",
                    "station": "press-2",
                    "routes": [{"tag": "badge", "pattern": r"OP-.*"}],
                },
                {
                    "name": "plc",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "station": "press-2",
                    "timeout_ms": 500,
                    "tags": [
                        {"name": "result", "table": "holding_register", "address": 0,
                         "type": "uint16"},
                        {"name": "nest", "table": "holding_register", "address": 1,
                         "type": "uint16"},
                        {"name": "program", "table": "holding_register", "address": 2,
                         "type": "string", "count": 4},
                    ],
                },
            ],
        }
    )  # fmt: skip


RESOURCES = {
    "operator_source": {"device": "scanner", "tag": "badge"},
    "resources": {
        "fixture": {"device": "plc", "tag": "nest"},
        "program": {"device": "plc", "tag": "program"},
    },
}


class Cell:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.now = 1000.0
        self.ctx = StationContext(cfg.stations, cfg.devices, clock=lambda: self.now)
        self.units: list[UnitRecord] = []

    def scan(self, ts: float, tag: str, value: str) -> None:
        self.ctx.tag("scanner", [Reading(ts, tag, value)])

    def poll(self, ts: float, **values: Any) -> None:
        self.ctx.tag("plc", [Reading(ts, k, v) for k, v in values.items()])

    def settle(self, now: float) -> list[UnitRecord]:
        self.now = now
        self.ctx.tick()
        self.units += self.ctx.take_changes().units
        return self.units


def test_units_carry_the_operator_and_the_resources_at_their_start_and_after_a_restart() -> None:
    cell = Cell(config(**RESOURCES))
    cell.poll(0.5, result=0, nest=1, program="v1.4")
    cell.scan(1.0, "serial", "SN1")  # no badge yet: SN1 takes the first one read
    cell.scan(1.2, "badge", "OP-anna")
    cell.scan(1.3, "badge", "OP-ben")  # SN1 has its operator: kept; the next units take ben
    cell.poll(2.0, result=1, nest=1, program="v1.4")
    cell.poll(2.5, result=0, nest=2, program="v1.4")  # the fixture indexes to nest 2
    cell.scan(3.0, "serial", "SN2")
    cell.poll(3.5, result=2, nest=3.0, program="v1.5")  # SN2 keeps what was there at its start
    # The nest tag and the serial in the same moment: the nest is applied first.
    cell.ctx.tag("plc", [Reading(4.0, "nest", 4.0)])  # a whole float: nest "4", not "4.0"
    cell.scan(4.0, "serial", "SN3")
    changes = cell.ctx.take_changes()
    again = Cell(cell.cfg)  # a restart: the open unit and the last values come back
    again.ctx.restore(changes.stations, changes.attempts)
    again.poll(5.0, result=1, nest=4, program="v1.5")
    again.scan(6.0, "serial", "SN4")
    again.poll(7.0, result=0, nest=4, program="v1.5")
    again.poll(7.5, result=1, nest=4, program="v1.5")
    assert [(u.serial, u.verdict, u.resources) for u in again.settle(30.0)] == [
        ("SN1", "pass", {"operator": "OP-anna", "fixture": "1", "program": "v1.4"}),
        ("SN2", "fail", {"operator": "OP-ben", "fixture": "2", "program": "v1.4"}),
        ("SN3", "pass", {"operator": "OP-ben", "fixture": "4", "program": "v1.5"}),
        ("SN4", "pass", {"operator": "OP-ben", "fixture": "4", "program": "v1.5"}),
    ]


def test_the_status_shows_what_the_unit_at_the_station_is_made_with() -> None:
    cell = Cell(config(**RESOURCES))
    assert cell.ctx.status()["press-2"]["resources"] == {}
    cell.poll(0.5, result=0, nest=2, program="v1.4")
    cell.scan(0.8, "badge", "OP-anna")
    cell.scan(1.0, "serial", "SN1")
    shown = cell.ctx.status()["press-2"]
    assert (shown["unit_serial"], shown["work_order"]) == ("SN1", None)
    assert shown["resources"] == {"fixture": "2", "operator": "OP-anna", "program": "v1.4"}
    cell.poll(2.0, result=1, nest=2, program="v1.4")  # the verdict: a scanned unit is gone
    shown = cell.ctx.status()["press-2"]
    assert (shown["present_serial"], shown["resources"]) == (None, {})


def test_a_station_without_resources_writes_records_without_them() -> None:
    cell = Cell(config())
    cell.poll(0.5, result=0, nest=1, program="v1.4")
    cell.scan(1.0, "serial", "SN1")
    cell.poll(2.0, result=1, nest=1, program="v1.4")
    (unit,) = cell.settle(30.0)
    assert unit.resources == {}
    assert b"resources" not in encode_unit(unit)  # records of other stations keep their bytes


def test_the_operator_from_the_http_unit_call_stays_until_another_is_given() -> None:
    cell = Cell(
        config(serial_source="http", operator_source="http",
               resources={"fixture": {"device": "plc", "tag": "nest"}})
    )  # fmt: skip
    cell.poll(0.5, result=0, nest=2)
    cell.ctx.set_serial("press-2", "SN1", ts=1.0, operator="OP-chen")
    cell.poll(1.5, result=1, nest=2)
    cell.ctx.set_serial("press-2", "SN2", ts=2.0)  # the same operator goes on working
    cell.poll(2.5, result=0, nest=2)
    cell.poll(3.0, result=1, nest=2)
    cell.ctx.set_serial("press-2", "SN3", ts=4.0, operator="OP-dana")
    cell.poll(4.5, result=0, nest=2)
    cell.poll(5.0, result=2, nest=2)
    assert [(u.serial, u.resources) for u in cell.settle(30.0)] == [
        ("SN1", {"operator": "OP-chen", "fixture": "2"}),
        ("SN2", {"operator": "OP-chen", "fixture": "2"}),
        ("SN3", {"operator": "OP-dana", "fixture": "2"}),
    ]


def test_the_record_goes_through_the_contract_with_its_resources() -> None:
    record = UnitRecord(
        serial="SN1", station="press-2", operation="press-fit", attempt=1, start_ts=1.0e9,
        end_ts=1.0e9 + 30, ended_by="verdict", verdict="pass", failure_code=None, readings=4,
        characteristics={}, resources={"operator": "OP-anna", "fixture": "3"},
    )  # fmt: skip
    body = with_seq([(7, encode_unit(record))])
    for message in (
        build_message("pc1", body, b"units"),
        envelope("pc1", "0" * 16, body, b"units"),
    ):
        (unit,) = decode_units(message)
        assert unit.resources == {"operator": "OP-anna", "fixture": "3"}
    assert orjson.loads(body)["resources"] == {"operator": "OP-anna", "fixture": "3"}


def test_the_example_cell_declares_an_operator_badge_and_three_resources() -> None:
    cfg = load_config(REPO / "config" / "assembly-cell.yaml")
    (station,) = cfg.stations
    assert str(station.operator_source) == "scanner-2.badge"
    assert {k: str(v) for k, v in station.resources.items()} == {
        "fixture": "press-plc.nest_id",
        "cavity": "press-plc.cavity_id",
        "program": "press-plc.program_rev",
    }


EXAMPLE = (REPO / "config" / "assembly-cell.yaml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "      fixture: {device: press-plc, tag: nest_id}",
            "      fixture: {device: press-plc, tag: nest}",
            "cell.yaml:22: stations[0].resources.fixture.tag: 'nest' is not a tag of device "
            "'press-plc'; its tags: cavity_id, force, nest_id, program_rev, result",
        ),
        (
            "      cavity: {device: press-plc, tag: cavity_id}",
            "      mould: {device: press-plc, tag: cavity_id}",
            "cell.yaml:23: stations[0].resources.mould.[key]: Input should be 'fixture', "
            "'cavity' or 'program'; got 'mould'",
        ),
        (
            "    operator_source: {device: scanner-2, tag: badge}",
            "    operator_source: http",
            "cell.yaml:14: stations[0]: operator_source 'http' needs serial_source 'http'",
        ),
        (
            "    operator_source: {device: scanner-2, tag: badge}",
            "    operator_source: {device: scanner-9, tag: badge}",
            "cell.yaml:19: stations[0].operator_source.device: device 'scanner-9' is not defined",
        ),
    ],
)
def test_resource_errors_name_the_file_line_and_path(old: str, new: str, expected: str) -> None:
    assert old in EXAMPLE
    with pytest.raises(ConfigError) as info:
        parse_config(EXAMPLE.replace(old, new, 1), "cell.yaml")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
