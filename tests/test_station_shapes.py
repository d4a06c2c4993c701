"""Station shapes in the context (pure logic, no I/O): retests on a serial that stays in the
tester's register, readings after the verdict, long runs past the timeout, spec limits, takt,
golden samples, rack slots expanded at load, and the live figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Config
from collector.config.loader import parse_config
from collector.context.tagging import StationContext
from common.errors import ConfigError
from contract.decode import decode_readings, decode_units
from contract.encode import ReadingEncoder, build_message, encode_unit, with_seq
from contract.records import Reading, UnitRecord, Value


def station_config(**station: Any) -> Config:
    """A tester whose serial, verdict and test counter are registers it polls."""
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "buffer": {"path": "/tmp/unused.db"},
            "stations": [
                {
                    "name": "ft-1",
                    "operation": "functional-test",
                    "serial_source": {"device": "tester", "tag": "serial"},
                    "verdict": {"device": "tester", "tag": "result", "map": {1: "pass", 2: "fail"}},
                    "key_characteristics": [
                        {"device": "tester", "tag": "leak", "usl": 15.0, "critical": True}
                    ],
                    **station,
                }
            ],
            "devices": [
                {
                    "name": "tester",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "station": "ft-1",
                    "tags": [
                        {"name": "leak", "table": "holding_register", "address": 0},
                        {"name": "result", "table": "holding_register", "address": 2},
                        {"name": "count", "table": "holding_register", "address": 3},
                        {
                            "name": "serial",
                            "table": "holding_register",
                            "address": 4,
                            "type": "string",
                            "count": 4,
                        },
                    ],
                }
            ],
        }
    )


class _Tester:
    def __init__(self, cfg: Config) -> None:
        self.now = 1000.0
        self.ctx = StationContext(cfg.stations, cfg.devices, clock=lambda: self.now)
        self.records: list[UnitRecord] = []
        self.contexts: list[tuple[Value, Any]] = []

    def poll(self, **values: Value) -> None:
        """One poll of the tester's registers, 1 s after the last."""
        self.now += 1
        readings = [Reading(self.now, tag, value) for tag, value in values.items()]
        for reading, context in zip(readings, self.ctx.tag("tester", readings), strict=True):
            self.contexts.append((reading.value if reading.tag == "leak" else None, context))
        self.ctx.tick(self.now)
        self.records += self.ctx.take_changes().units

    def last(self) -> Any:
        return self.contexts[-1][1]

    def settle(self) -> None:
        self.now += 60
        self.ctx.tick(self.now, final=True)
        self.records += self.ctx.take_changes().units


def test_verdict_cleared_on_the_same_serial_is_the_next_attempt_and_after_is_tagged() -> None:
    t = _Tester(station_config())
    t.poll(serial="", result=1, leak=0.0)  # baseline: the last shift's verdict
    t.poll(serial="SN1", result=1, leak=1.0)
    assert t.last()[1:4] == ("SN1", "functional-test", 1)
    assert t.last().phase == "test"
    t.poll(serial="SN1", result=0, leak=20.0)  # test starts: the verdict clears
    t.poll(serial="SN1", result=2, leak=20.0)  # fail
    t.poll(serial="SN1", result=2, leak=20.5)  # unclamping: still the unit, after its test
    assert (t.last().unit_serial, t.last().attempt, t.last().phase) == ("SN1", 1, "after")
    t.poll(serial="SN1", result=0, leak=12.0)  # retest: verdict back to "no verdict"
    assert (t.last().attempt, t.last().phase) == (2, "test")
    t.poll(serial="SN1", result=1, leak=12.0)
    t.poll(serial="SN1", result=1, leak=12.0)
    assert (t.last().attempt, t.last().phase) == (2, "after")
    t.poll(serial="", result=1, leak=0.0)  # the unit leaves
    assert (t.last().unit_serial, t.last().phase) == (None, None)
    t.settle()
    assert [(r.serial, r.attempt, r.verdict, r.ended_by) for r in t.records] == [
        ("SN1", 1, "fail", "verdict"),
        ("SN1", 2, "pass", "verdict"),
    ]
    # The record counts the test phase only (its readings up to and including the verdict).
    test_readings = [c for _, c in t.contexts if c.phase == "test"]
    assert [r.readings for r in t.records] == [
        sum(1 for c in test_readings if c.attempt == a) for a in (1, 2)
    ]
    fail, passed = t.records
    assert fail.characteristics["leak"] == (20.0, 1.0, 20.0)
    assert fail.specs["leak"].in_spec is False
    assert passed.specs["leak"].in_spec is True
    assert (passed.specs["leak"].usl, passed.specs["leak"].critical) == (15.0, True)


def test_with_a_start_counter_only_the_counter_starts_a_retest() -> None:
    t = _Tester(station_config(start={"device": "tester", "tag": "count"}))
    t.poll(serial="", result=0, count=7)
    t.poll(serial="SN1", result=0, count=8)
    t.poll(serial="SN1", result=1, count=8)
    t.poll(serial="SN1", result=0, count=8)  # the tester clears its verdict: not a start here
    assert (t.last().attempt, t.last().phase) == (1, "after")
    t.poll(serial="SN1", result=0, count=9)
    assert (t.last().attempt, t.last().phase) == (2, "test")
    t.poll(serial="SN1", result=0, count=10)  # a start during the open attempt: the same test
    assert t.last().attempt == 2


def test_a_timeout_ends_the_test_but_keeps_the_present_serial() -> None:
    t = _Tester(station_config(unit_timeout_s=5))
    t.poll(serial="", result=0)
    t.poll(serial="SN9", result=0)
    for _ in range(10):
        t.poll(serial="SN9", result=0, leak=3.0)
    assert (t.last().unit_serial, t.last().attempt, t.last().phase) == ("SN9", 1, "after")
    t.settle()
    assert [(r.serial, r.verdict, r.ended_by) for r in t.records] == [
        ("SN9", "incomplete", "timeout")
    ]
    assert t.ctx.present_serial("ft-1") == "SN9"
    assert t.ctx.current_serial("ft-1") is None


def test_golden_pattern_takt_and_figures() -> None:
    t = _Tester(station_config(golden_pattern=r"GOLD-\d+", takt_s=45))
    t.poll(serial="", result=0)
    for serial, verdicts in (("SN1", [1]), ("GOLD-1", [1]), ("SN2", [2, 1]), ("SN3", [2])):
        t.poll(serial=serial, result=0)
        for verdict in verdicts:
            t.poll(serial=serial, result=0)
            t.poll(serial=serial, result=verdict)
            assert t.last().golden is (serial == "GOLD-1")
    t.poll(serial="", result=0)
    t.settle()
    assert [(r.serial, r.attempt, r.golden, r.takt_s) for r in t.records] == [
        ("SN1", 1, False, 45),
        ("GOLD-1", 1, True, 45),
        ("SN2", 1, False, 45),
        ("SN2", 2, False, 45),
        ("SN3", 1, False, 45),
    ]
    figures = t.ctx.status()["ft-1"]["figures"]
    assert figures["units"] == 4  # the golden sample is not production
    assert figures["golden"] == 1
    assert (figures["passes"], figures["fails"], figures["retests"]) == (2, 2, 1)
    assert figures["first_pass_passes"] == 1
    assert figures["first_pass_yield"] == pytest.approx(1 / 3)
    assert figures["last_cycle_time_s"] == pytest.approx(2.0)
    body = encode_unit(t.records[1])
    assert b'"golden":true' in body
    assert b'"takt_s":45' in body


def rack_config(**extra: Any) -> Config:
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "buffer": {"path": "/tmp/unused.db"},
            "stations": [
                {
                    "name": "rack-a",
                    "operation": "burn-in",
                    "slots": {"first": 1, "last": 32},
                    "serial_source": {"device": "rack", "tag": "slot{slot:02d}.serial"},
                    "key_characteristics": [{"device": "rack", "tag": "slot{slot:02d}.temp"}],
                    **extra,
                }
            ],
            "devices": [
                {
                    "name": "rack",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "station": "rack-a",
                    "tags": [
                        {"name": "ambient", "table": "input_register", "address": 0},
                        {
                            "name": "slot{slot:02d}.temp",
                            "slots": {"first": 1, "last": 32},
                            "table": "input_register",
                            "address": 100,
                            "stride": 10,
                        },
                        {
                            "name": "slot{slot:02d}.serial",
                            "slots": {"first": 1, "last": 32},
                            "table": "input_register",
                            "address": 102,
                            "stride": 10,
                            "type": "string",
                            "count": 4,
                        },
                    ],
                }
            ],
        }
    )


def test_a_rack_is_expanded_at_load_and_each_slot_tags_its_own_readings() -> None:
    cfg = rack_config()
    assert [s.name for s in cfg.stations][:2] == ["rack-a.slot01", "rack-a.slot02"]
    assert len(cfg.stations) == 32
    device = cfg.devices[0]
    tags = {t.name: t for t in device.tags}  # type: ignore[attr-defined]
    assert (tags["slot07.temp"].address, tags["slot07.temp"].slot) == (160, 7)
    assert tags["slot07.serial"].address == 162
    ctx = StationContext(cfg.stations, cfg.devices, clock=lambda: 0.0)
    poll = [Reading(1.0, "ambient", 21)]
    for slot in range(1, 33):
        poll += [Reading(1.0, f"slot{slot:02d}.serial", f"SN{slot}" if slot != 5 else "")]
        poll += [Reading(1.0, f"slot{slot:02d}.temp", 40 + slot)]
    contexts = ctx.tag("rack", poll)
    assert contexts[0][:3] == ("rack-a", None, "burn-in")
    for reading, context in zip(poll[1:], contexts[1:], strict=True):
        slot = int(reading.tag[4:6])
        assert (context.station, context.slot) == ("rack-a", slot)
        assert context.unit_serial == (f"SN{slot}" if slot != 5 else None)
    status = ctx.status()
    assert status["rack-a.slot07"]["slot"] == 7
    assert status["rack-a.slot07"]["unit_serial"] == "SN7"
    assert status["rack-a.slot07"]["unit_readings"] == 2
    ctx.tag("rack", [Reading(2.0, "slot07.serial", "")])
    ctx.tick(100.0, final=True)
    (record,) = ctx.take_changes().units
    assert (record.serial, record.station, record.slot) == ("SN7", "rack-a", 7)
    assert record.characteristics["slot07.temp"] == (47, 47, 47)


RACK_EXAMPLE = Path(__file__).parent.parent / "config" / "burn-in-rack.yaml"


def test_the_burn_in_example_is_one_rack_of_32_slots_in_a_few_lines() -> None:
    text = RACK_EXAMPLE.read_text()
    cfg = parse_config(text, "burn-in-rack.yaml")
    slots = [s for s in cfg.stations if s.group == "rack-a"]
    assert [s.slot for s in slots] == list(range(1, 33))
    assert {s.unit_timeout_s for s in slots} == {180000}
    rack = next(d for d in cfg.devices if d.name == "rack-a")
    assert len(rack.tags) == 5 * 32 + 1  # type: ignore[attr-defined]
    assert rack.tag_slots()["slot32.serial"] == 32
    # The rack's station and device, as written: at most about 40 lines.
    station = text[text.index("  - name: rack-a\n") : text.index("  - name: ft-2")]
    device = text[text.index("devices:\n") : text.index("  - name: tester-2")]
    assert len(station.splitlines()) + len(device.splitlines()) <= 40


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "slots: {first: 1, last: 32}\n    serial",
            "slots: {first: 3, last: 1}\n    serial",
            "burn-in-rack.yaml:24: stations[0].slots: last must be >= first",
        ),
        (
            "tag: 'slot{slot:02d}.serial'}",
            "tag: 'slot{slot:02d}.serail'}",
            "burn-in-rack.yaml:25: stations[0].serial_source.tag: 'slot01.serail' is not a tag",
        ),
        (
            "usl: 90.0, target",
            "usl: 90.0, lsl: 100, target",
            "burn-in-rack.yaml:28: stations[0].key_characteristics[0]: lsl 100.0 is above usl 90.0",
        ),
    ],
)
def test_errors_in_a_slotted_station_point_at_its_line_once(
    old: str, new: str, expected: str
) -> None:
    text = RACK_EXAMPLE.read_text()
    assert old in text
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace(old, new), "burn-in-rack.yaml")
    problems = str(caught.value).splitlines()
    assert problems[0].startswith(expected)
    assert len(problems) == 1, problems


def test_a_state_stored_before_presence_keeps_ended_units_gone() -> None:
    """A buffer file from the previous version: its ended unit must not become present."""
    t = _Tester(station_config())
    old = {
        "operation": "functional-test",
        "last": {"serial": "SN1", "verdict": 1},
        "units": [
            {
                "serial": "SN1",
                "operation": "functional-test",
                "attempt": 1,
                "start_ts": 900.0,
                "end_ts": 950.0,
                "ended_by": "verdict",
                "verdict": "pass",
                "failure_code": None,
                "readings": 5,
                "characteristics": {},
                "emit_at": 2000.0,
                "emitted": False,
            }
        ],
    }
    t.ctx.restore({"ft-1": orjson.dumps(old)}, {("functional-test", "SN1"): 1})
    t.poll(serial="SN1", result=1, leak=1.0)
    assert (t.last().unit_serial, t.last().phase) == (None, None)
    assert t.ctx.present_serial("ft-1") is None


def test_takt_per_operation_and_a_bad_takt() -> None:
    t = _Tester(station_config(takt_s={"functional-test": 40, "retest": 60}))
    t.poll(serial="", result=0)
    t.poll(serial="SN1", result=0)
    t.poll(serial="SN1", result=1)
    t.settle()
    assert [r.takt_s for r in t.records] == [40]
    text = RACK_EXAMPLE.read_text().replace("takt_s: 172800", "takt_s: 0")
    with pytest.raises(ConfigError, match=r"burn-in-rack\.yaml:30: stations\[0\]\.takt_s: .*> 0"):
        parse_config(text, "burn-in-rack.yaml")


def test_the_new_fields_pass_the_reference_decoder() -> None:
    """What the collector now sends in schema 1 is accepted by contract.decode (the store's
    decoder): unit records with slot, takt, golden and spec limits; readings with slot,
    phase and golden."""
    t = _Tester(station_config(golden_pattern="G.*", takt_s=30))
    t.poll(serial="", result=0, leak=1.0)
    t.poll(serial="G1", result=0, leak=20.0)
    t.poll(serial="G1", result=2, leak=20.0)
    t.poll(serial="G1", result=2, leak=20.0)
    t.settle()
    (record,) = t.records
    units = decode_units(build_message("pc1", with_seq([(1, encode_unit(record))]), b"units"))
    assert (units[0].golden, units[0].takt_s, units[0].slot) == (True, 30, None)
    assert units[0].characteristics["leak"]["in_spec"] is False
    assert units[0].characteristics["leak"]["critical"] is True
    readings = [Reading(5.0, "leak", 20.0)]
    contexts = [c for _, c in t.contexts[-1:]]
    body = ReadingEncoder().encode(1, "tester", readings, contexts)
    (flat,) = decode_readings(build_message("pc1", body))
    assert (flat.unit_serial, flat.attempt) == ("G1", 1)


def test_slots_beyond_the_device_s_tags_are_reported_once() -> None:
    text = RACK_EXAMPLE.read_text()
    short = "'slot{slot:02d}.serial', slots: {first: 1, last: 32}"
    assert short in text
    with pytest.raises(ConfigError) as caught:
        parse_config(
            text.replace(short, "'slot{slot:02d}.serial', slots: {first: 1, last: 16}"),
            "burn-in-rack.yaml",
        )
    (problem,) = str(caught.value).splitlines()
    assert "'slot17.serial' is not a tag of device 'rack-a'" in problem
