"""Station context (pure logic, no I/O): unit lifecycle, tagging by read time, attempts,
verdicts, key characteristics, and the state that survives a restart."""

from __future__ import annotations

from typing import Any

import pytest

from collector.config import Config, Verdict
from collector.context.tagging import StationContext, map_verdict
from contract.codes import ErrorCode
from contract.records import Context, Reading, UnitRecord, Value


def config(**station: Any) -> Config:
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "s", "line": "l"},
            "buffer": {"path": "/tmp/unused.db"},
            "stations": [
                {
                    "name": "ft-1",
                    "operation": "functional-test",
                    "serial_source": {"device": "scanner", "tag": "serial"},
                    "verdict": {"device": "tester", "tag": "result", "map": {1: "pass", 2: "fail"}},
                    "failure_code": {"device": "tester", "tag": "code"},
                    "key_characteristics": [{"device": "tester", "tag": "leak"}],
                    **station,
                }
            ],
            "devices": [
                {
                    "name": "scanner",
                    "protocol": "barcode_scanner",
                    "port": "/dev/x",
                    "station": "ft-1",
                    "routes": [{"tag": "work_order", "pattern": r"WO-.*"}],
                },
                {
                    "name": "tester",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "station": "ft-1",
                    "timeout_ms": 500,
                    "tags": [
                        {
                            "name": "leak",
                            "table": "holding_register",
                            "address": 0,
                            "type": "float32",
                        },
                        {
                            "name": "result",
                            "table": "holding_register",
                            "address": 2,
                            "type": "uint16",
                        },
                        {
                            "name": "code",
                            "table": "holding_register",
                            "address": 3,
                            "type": "uint16",
                        },
                        {"name": "done", "table": "coil", "address": 0, "type": "bool"},
                        {
                            "name": "program",
                            "table": "holding_register",
                            "address": 4,
                            "type": "string",
                            "count": 4,
                        },
                    ],
                },
            ],
        }
    )


class Line:
    """The context with a clock the test moves, and helpers that deliver polls."""

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg or config()
        self.now = 1000.0
        self.ctx = StationContext(self.cfg.stations, self.cfg.devices, clock=lambda: self.now)
        self.units: list[UnitRecord] = []

    def scan(self, ts: float, serial: str) -> list[tuple[Reading, Context]]:
        readings = [Reading(ts, "serial", serial)]
        return list(zip(readings, self.ctx.tag("scanner", readings), strict=True))

    def poll(self, ts: float, **values: Value) -> list[tuple[Reading, Context]]:
        readings = [Reading(ts, k, v) for k, v in values.items()]
        return list(zip(readings, self.ctx.tag("tester", readings), strict=True))

    def settle(self, now: float) -> list[UnitRecord]:
        self.now = now
        self.ctx.tick()
        self.units += self.ctx.take_changes().units
        return self.units


def serials(tagged: list[tuple[Reading, Context]]) -> list[tuple[str, str | None, int | None]]:
    return [(r.tag, c.unit_serial, c.attempt) for r, c in tagged]


def test_a_reading_read_before_the_serial_changed_keeps_the_old_serial() -> None:
    line = Line()
    line.scan(1.0, "SN1")
    line.poll(2.0, result=0)  # baseline
    # The scanner's scan at 3.05 is handled first; the tester poll read at 3.0 arrives later.
    line.scan(3.05, "SN2")
    late = line.poll(3.0, leak=0.5)
    after = line.poll(3.1, leak=0.7)
    assert serials(late) == [("leak", "SN1", 1)]
    assert serials(after) == [("leak", "SN2", 1)]
    units = line.settle(10.0)
    assert [(u.serial, u.readings, u.ended_by, u.verdict) for u in units] == [
        ("SN1", 3, "next_serial", "incomplete")  # its scan, the baseline poll, the late poll
    ]
    assert units[0].characteristics == {"leak": (0.5, 0.5, 0.5)}


def test_verdict_ends_the_unit_and_a_rescan_is_a_retest() -> None:
    line = Line()
    line.poll(0.5, result=1, code=0)  # the last unit's result: a baseline, not a verdict
    line.scan(1.0, "SN1")
    assert line.ctx.current_serial("ft-1") == "SN1"
    line.poll(1.5, result=0, leak=2.0)
    line.poll(2.0, result=0, leak=3.0)
    line.poll(2.5, result=2, code=17, leak=2.5)  # fail, with its code, in the same poll
    assert line.ctx.current_serial("ft-1") is None
    idle = line.poll(3.0, result=2, leak=0.0)
    assert serials(idle) == [("result", None, None), ("leak", None, None)]
    # Reworked and scanned again: attempt 2, which passes.
    line.scan(4.0, "SN1")
    line.poll(4.5, result=0)
    line.poll(5.0, result=1, code=0)
    units = line.settle(20.0)
    assert [(u.serial, u.attempt, u.verdict, u.failure_code, u.ended_by) for u in units] == [
        ("SN1", 1, "fail", 17, "verdict"),
        ("SN1", 2, "pass", None, "verdict"),
    ]
    first = units[0]
    assert (first.start_ts, first.end_ts) == (1.0, 2.5)
    assert first.characteristics == {"leak": (2.5, 2.0, 3.0)}
    # The scan, three polls of three/two tags: every reading tagged with the unit counts.
    assert first.readings == 1 + 2 + 2 + 3
    assert first.operation == "functional-test"


def test_a_failure_code_written_just_after_the_verdict_counts_for_that_unit() -> None:
    """Testers often write the failure code a moment after the verdict: the code still belongs
    to the unit that just failed (its record is not out yet), not to the next one."""
    line = Line()
    line.poll(0.5, result=0, code=0)  # baselines
    line.scan(1.0, "SN1")
    line.poll(2.0, result=2, code=0)  # fail; the code is not there yet
    assert line.ctx.current_serial("ft-1") is None
    line.poll(2.5, result=2, code=317)  # one poll later
    line.scan(3.0, "SN2")
    line.poll(3.5, result=0, code=0)  # the next test clears the code
    line.poll(4.0, result=1, code=0)
    units = line.settle(20.0)
    assert [(u.serial, u.verdict, u.failure_code) for u in units] == [
        ("SN1", "fail", 317),
        ("SN2", "pass", None),
    ]


def test_the_same_serial_scanned_twice_while_its_unit_is_open_changes_nothing() -> None:
    line = Line()
    line.scan(1.0, "SN1")
    line.scan(2.0, "SN1")
    assert line.ctx.status()["ft-1"]["attempt"] == 1
    assert line.settle(100.0) == []


def test_a_unit_without_a_verdict_ends_by_timeout_as_incomplete() -> None:
    line = Line(config(unit_timeout_s=60))
    line.scan(1000.0, "SN1")
    line.poll(1001.0, result=0)
    assert line.settle(1059.0) == []
    line.settle(1060.0)  # ends now; its record waits for late readings
    assert line.ctx.current_serial("ft-1") is None
    units = line.settle(1070.0)
    assert [(u.serial, u.verdict, u.ended_by, u.end_ts) for u in units] == [
        ("SN1", "incomplete", "timeout", 1060.0)
    ]


def test_a_late_reading_counts_for_its_unit_until_the_record_is_out() -> None:
    line = Line()
    line.scan(1.0, "SN1")
    line.poll(1.5, result=0)
    line.poll(2.0, result=1)  # ends SN1 at 2.0
    line.settle(2.1)
    line.poll(1.9, leak=9.0)  # read before the verdict, delivered after it
    units = line.settle(10.0)
    assert units[0].characteristics == {"leak": (9.0, 9.0, 9.0)}


def test_cycle_complete_ends_the_unit_with_the_verdict_shown_then() -> None:
    cfg = config(unit_end="cycle_complete", cycle_complete={"device": "tester", "tag": "done"})
    line = Line(cfg)
    line.poll(0.5, result=1, done=False)
    line.scan(1.0, "SN1")
    # The result stays 1 (pass) from the last unit: no change, so no verdict by change...
    line.poll(2.0, result=1, done=False)
    assert line.ctx.current_serial("ft-1") == "SN1"
    # ...but at cycle complete the result register is what counts.
    line.poll(3.0, result=1, done=True)
    units = line.settle(10.0)
    assert [(u.verdict, u.ended_by) for u in units] == [("pass", "cycle_complete")]


def test_next_serial_mode_keeps_the_last_verdict_seen() -> None:
    line = Line(config(unit_end="next_serial"))
    line.poll(0.5, result=0)
    line.scan(1.0, "SN1")
    line.poll(2.0, result=2, code=5)
    assert line.ctx.current_serial("ft-1") == "SN1"  # still there
    line.scan(3.0, "SN2")
    units = line.settle(10.0)
    assert [(u.serial, u.verdict, u.failure_code, u.ended_by) for u in units] == [
        ("SN1", "fail", 5, "next_serial")
    ]


def test_operation_from_a_tag_splits_the_unit_and_counts_attempts_per_operation() -> None:
    line = Line(config(operation_source={"device": "tester", "tag": "program"}))
    line.poll(0.5, program="flash", result=0)
    line.scan(1.0, "SN1")
    line.poll(2.0, program="calibrate", result=0)
    ((_, context),) = line.poll(2.5, leak=1.0)
    assert (context.station, context.operation, context.attempt) == ("ft-1", "calibrate", 1)
    units = line.settle(10.0)
    assert [(u.operation, u.attempt, u.ended_by) for u in units] == [
        ("flash", 1, "operation_changed")
    ]


def test_state_survives_a_restart() -> None:
    line = Line()
    line.poll(0.5, result=0)
    line.scan(1.0, "SN1")
    line.poll(1.5, leak=4.0)
    changes = line.ctx.take_changes()
    assert changes.attempts == {("functional-test", "SN1"): 1}
    # A new process: the stored station state and attempts come back.
    again = Line()
    again.ctx.restore(changes.stations, changes.attempts)
    assert again.ctx.current_serial("ft-1") == "SN1"
    again.poll(2.0, result=0)  # unchanged since before the restart: not a signal
    again.poll(2.5, result=1, leak=5.0)
    units = again.settle(10.0)
    assert [(u.serial, u.attempt, u.verdict) for u in units] == [("SN1", 1, "pass")]
    assert units[0].characteristics == {"leak": (5.0, 4.0, 5.0)}
    # A rescan after the restart is still a retest.
    again.scan(11.0, "SN1")
    assert again.ctx.status()["ft-1"]["attempt"] == 2


def test_a_scanned_work_order_goes_to_the_units_that_follow_and_survives_a_restart() -> None:
    """The operator scans the work order's traveller, then each unit: the units take the last
    work order read; one scanned after the serial goes to the unit present if it has none.
    The old process is never settled: it stopped (crashed) after take_changes."""
    line = Line(config(work_order_source={"device": "scanner", "tag": "work_order"}))

    def scan_wo(ts: float, work_order: str) -> None:
        line.ctx.tag("scanner", [Reading(ts, "work_order", work_order)])

    line.poll(0.5, result=0)
    line.scan(1.0, "SN0")  # before any work order: none
    scan_wo(1.2, "WO-\x1b[2J")  # a control character: refused like such a serial
    scan_wo(1.5, "WO-7")  # read while SN0 is present: SN0 takes it
    line.poll(2.0, result=1)
    line.scan(3.0, "SN1")
    line.poll(3.5, result=0)
    line.poll(4.0, result=2)  # fail
    scan_wo(5.0, "WO-8")
    line.scan(6.0, "SN2")
    changes = line.ctx.take_changes()
    # A new process: the last work order read comes back with the station's state.
    again = Line(line.cfg)
    again.ctx.restore(changes.stations, changes.attempts)
    again.scan(7.0, "SN1")  # the retest, in the new work order (a retest keeps none of its own)
    again.poll(7.5, result=0)
    again.poll(8.0, result=1)
    # The units that ended before the restart come out of the restored state with theirs.
    assert [(u.serial, u.attempt, u.work_order) for u in again.settle(20.0)] == [
        ("SN0", 1, "WO-7"),
        ("SN1", 1, "WO-7"),
        ("SN2", 1, "WO-8"),  # ended by the next serial
        ("SN1", 2, "WO-8"),
    ]


def test_a_work_order_from_http_wins_over_the_last_one_scanned() -> None:
    line = Line(config(work_order_source={"device": "scanner", "tag": "work_order"}))
    line.ctx.tag("scanner", [Reading(1.0, "work_order", "WO-SCANNED")])
    line.ctx.set_serial("ft-1", "SN1", ts=1.5, work_order="WO-POSTED")
    line.poll(2.0, result=0)
    line.poll(2.5, result=1)
    assert [(u.serial, u.work_order) for u in line.settle(20.0)] == [("SN1", "WO-POSTED")]


def test_the_units_work_order_is_in_the_context_of_the_readings_tagged_once_it_is_known() -> None:
    """The unit context carries the work order of the unit whose record carries it: from the
    moment it arrives (scanned after the serial: readings before it do not carry it), and the
    next unit takes the last one read from its start."""
    line = Line(config(work_order_source={"device": "scanner", "tag": "work_order"}))

    def work_orders(tagged: list[tuple[Reading, Context]]) -> list[tuple[str | None, ...]]:
        return [(c.unit_serial, c.phase, c.work_order) for _, c in tagged]

    line.poll(0.5, result=0)
    line.scan(1.0, "SN0")
    before = line.poll(1.5, leak=4.0)
    line.ctx.tag("scanner", [Reading(2.0, "work_order", "WO-7")])
    after = line.poll(2.5, leak=4.5)
    line.poll(3.0, result=1)  # pass
    line.scan(4.0, "SN1")
    following = line.poll(4.5, leak=5.0)
    assert work_orders(before) == [("SN0", "test", None)]
    assert work_orders(after) == [("SN0", "test", "WO-7")]
    assert work_orders(following) == [("SN1", "test", "WO-7")]
    # The same work order as the unit's record names.
    first = line.settle(20.0)[0]
    assert (first.serial, first.work_order) == ("SN0", "WO-7")
    # Readings of no unit carry none.
    line.ctx.tag("scanner", [Reading(21.0, "serial", "")])
    assert work_orders(line.poll(21.5, leak=1.0)) == [(None, None, None)]


def test_a_station_without_work_orders_tags_contexts_without_one() -> None:
    line = Line()
    line.scan(1.0, "SN1")
    ((_, context),) = line.poll(1.5, leak=4.0)
    assert (context.unit_serial, context.work_order) == ("SN1", None)


def test_bad_readings_are_tagged_but_are_not_signals_or_characteristics() -> None:
    line = Line()
    line.poll(0.5, result=0)
    line.scan(1.0, "SN1")
    bad = [
        Reading.bad(1.5, "result", ErrorCode.TIMEOUT),
        Reading.bad(1.5, "leak", ErrorCode.TIMEOUT),
    ]
    records = line.ctx.tag("tester", bad)
    assert [r.unit_serial for r in records] == ["SN1", "SN1"]
    assert line.ctx.current_serial("ft-1") == "SN1"
    line.poll(2.0, result=1)
    assert line.settle(10.0)[0].characteristics == {}


@pytest.mark.parametrize(
    ("table", "value", "expected"),
    [
        ({1: "pass", 2: "fail"}, 1, Verdict.PASS),
        ({1: "pass", 2: "fail"}, 2.0, Verdict.FAIL),
        ({1: "pass", 2: "fail"}, "2", Verdict.FAIL),
        ({1: "pass", 2: "fail"}, 0, None),
        ({"OK": "pass", "NOK": "rework"}, "NOK", Verdict.REWORK),
        (None, "PASS", Verdict.PASS),
        (None, "Scrap", Verdict.SCRAP),
        (None, "incomplete", None),
        (None, True, Verdict.PASS),
        (None, False, Verdict.FAIL),
        (None, 1, None),
    ],
)
def test_verdict_mapping(
    table: dict[Any, str] | None, value: Value, expected: Verdict | None
) -> None:
    verdict: dict[str, Any] = {"device": "tester", "tag": "result"}
    if table is not None:
        verdict["map"] = table
    station = config(verdict=verdict).stations[0]
    assert map_verdict(station, value) is expected


def test_at_shutdown_ended_units_are_finished_at_once() -> None:
    line = Line()
    line.poll(0.5, result=0)
    line.scan(1.0, "SN1")
    line.poll(2.0, result=1)
    line.ctx.tick(now=2.1)
    assert line.ctx.take_changes().units == []  # still waiting for late readings
    line.ctx.tick(now=2.1, final=True)  # polling has stopped: none can come
    assert [u.serial for u in line.ctx.take_changes().units] == ["SN1"]


def test_a_stored_state_that_cannot_be_read_starts_the_station_empty() -> None:
    line = Line()
    line.ctx.restore({"ft-1": b'{"operation": "x"}', "gone": b"{}"}, {})
    assert line.ctx.current_serial("ft-1") is None
    line.scan(1.0, "SN1")
    assert line.ctx.current_serial("ft-1") == "SN1"
