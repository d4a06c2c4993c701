"""Station shapes end to end with real parts (pymodbus tester, asyncua rack, mosquitto,
SQLite): a tester that keeps the serial in its registers and retests it; a 32-slot burn-in
rack on one OPC-UA session to a server that takes only a few; a burn-in past its timeout; a
crash in the middle of a slot's unit."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector.config import Config
from drivers.modbus.codec import TagCodec
from drivers.modbus.sim import SimulatedModbusServer
from drivers.opcua.sim import SimulatedBurnInRack, rack_slot_tags
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    assert_no_gaps,
    async_wait_until,
    start_collector,
)

SLOTS = 32


def base(broker: Mosquitto, tmp_path: Path) -> dict[str, Any]:
    return {
        "collector": {"id": "pc1", "site": "plant-a", "line": "line-1"},
        "buffer": {"path": str(tmp_path / "b.db")},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5, "shutdown_grace_s": 5},
        "health": {"port": 0},
    }


def units(sub: Subscriber) -> list[dict[str, Any]]:
    return [u for p in sub.payloads("/units") for u in p["units"]]


@pytest.fixture
async def subscriber(mosquitto: Mosquitto) -> AsyncIterator[Subscriber]:
    sub = Subscriber(mosquitto, TOPIC)
    yield sub
    sub.close()


# --------------------------------------------------------------------------- the tester


def modbus_tester_config(broker: Mosquitto, port: int, tmp_path: Path, **health: Any) -> Config:
    """A libmodbus-style tester: serial in string registers, a verdict it clears to 0 when a
    test starts, a leakage measurement with an upper limit."""
    return Config.model_validate(
        {
            **base(broker, tmp_path),
            "health": {"port": 0, **health},
            "stations": [
                {
                    "name": "ft-1",
                    "operation": "functional-test",
                    "serial_source": {"device": "tester-1", "tag": "serial"},
                    "verdict": {
                        "device": "tester-1",
                        "tag": "result",
                        "map": {1: "pass", 2: "fail"},
                    },
                    "key_characteristics": [
                        {"device": "tester-1", "tag": "leak", "usl": 15.0, "critical": True}
                    ],
                    "takt_s": 30,
                    "golden_pattern": r"GOLD-\d+",
                }
            ],
            "devices": [
                {
                    "name": "tester-1",
                    "protocol": "modbus_tcp",
                    "station": "ft-1",
                    "host": "127.0.0.1",
                    "port": port,
                    "poll_interval_ms": 50,
                    "tags": [
                        {
                            "name": "leak",
                            "table": "holding_register",
                            "address": 0,
                            "type": "float32",
                        },
                        {
                            "name": "serial",
                            "table": "holding_register",
                            "address": 10,
                            "type": "string",
                            "count": 8,
                        },
                        {"name": "result", "table": "holding_register", "address": 20},
                    ],
                }
            ],
        }
    )


async def test_a_tester_that_keeps_the_serial_retests_it_and_tags_readings_after_the_verdict(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    subscriber: Subscriber,
) -> None:
    config = modbus_tester_config(mosquitto, modbus_server.port, tmp_path)
    device = config.devices[0]
    codecs = {t.name: TagCodec.for_device(t, device) for t in device.tags}  # type: ignore[attr-defined,arg-type]

    async def tester(**values: Any) -> None:
        for name, value in values.items():
            await modbus_server.set_value(1, codecs[name], value)

    sub = subscriber

    def seen(**want: Any) -> int:
        return sum(
            1
            for r in sub.readings()
            if all(r.get(k, False if k == "golden" else None) == v for k, v in want.items())
        )

    async def readings(n: int = 3, **want: Any) -> None:
        await async_wait_until(lambda: seen(**want) >= n, 10, f"readings {want}")

    await tester(serial="", result=1, leak=0.0)  # the last shift's verdict still shown
    async with RunningService(config) as running:
        ctx = running.service.context
        await tester(serial="SN-R1", result=0, leak=18.0)
        await readings(unit_serial="SN-R1", attempt=1, phase="test", tag="leak", value=18.0)
        await tester(result=2)  # fail
        await async_wait_until(lambda: ctx.current_serial("ft-1") is None, 10, "the fail")
        # Unclamping: the serial is still in the register.
        await readings(unit_serial="SN-R1", attempt=1, phase="after", tag="leak")
        await tester(result=0, leak=12.0)  # the retest starts: the verdict clears
        await readings(unit_serial="SN-R1", attempt=2, phase="test", tag="leak", value=12.0)
        await tester(result=1)
        await readings(unit_serial="SN-R1", attempt=2, phase="after", tag="leak")
        await tester(serial="GOLD-7", result=0, leak=5.0)  # a golden sample
        await readings(unit_serial="GOLD-7", attempt=1, golden=True, tag="leak", value=5.0)
        await tester(result=1)
        await readings(unit_serial="GOLD-7", phase="after", golden=True, tag="leak")
        await tester(serial="", result=1)
        await readings(unit_serial=None, attempt=None, phase=None, tag="leak")
        await async_wait_until(lambda: len(units(sub)) >= 3, 20, "three unit records")
        status = await running.service.status()
        port = running.service.health_server.bound_port  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            metrics = (await http.get("/metrics")).text
    records = units(sub)
    assert [(u["serial"], u["attempt"], u["verdict"], u["golden"]) for u in records] == [
        ("SN-R1", 1, "fail", False),
        ("SN-R1", 2, "pass", False),
        ("GOLD-7", 1, "pass", True),
    ]
    fail, passed, _ = records
    assert fail["characteristics"]["leak"]["in_spec"] is False
    assert fail["characteristics"]["leak"]["usl"] == 15.0
    assert fail["characteristics"]["leak"]["critical"] is True
    assert passed["characteristics"]["leak"]["in_spec"] is True
    assert passed["takt_s"] == 30
    # A record counts its test phase: the readings tagged with it and phase "test".
    for u in records:
        assert u["readings"] == seen(unit_serial=u["serial"], attempt=u["attempt"], phase="test")
    # While a serial was in the register, no reading went out without one.
    assert_no_gaps(sub.seqs())
    for line in (
        'collector_station_units_total{station="ft-1"} 2.0',
        'collector_station_fails_total{station="ft-1"} 1.0',
        'collector_station_retests_total{station="ft-1"} 1.0',
        'collector_station_golden_total{station="ft-1"} 1.0',
        'collector_station_first_pass_passes_total{station="ft-1"} 0.0',
    ):
        assert line in metrics.splitlines(), line
    figures = status["stations"]["ft-1"]["figures"]
    assert (figures["units"], figures["fails"], figures["retests"], figures["golden"]) == (
        2,
        1,
        1,
        1,
    )


# --------------------------------------------------------------------------- the rack


def rack_config(broker: Mosquitto, endpoint: str, tmp_path: Path, **station: Any) -> dict[str, Any]:
    return {
        **base(broker, tmp_path),
        "stations": [
            {
                "name": "rack-a",
                "operation": "burn-in",
                "slots": {"first": 1, "last": SLOTS},
                "serial_source": {"device": "rack", "tag": "slot{slot:02d}.serial"},
                "key_characteristics": [
                    {"device": "rack", "tag": "slot{slot:02d}.temp", "usl": 90}
                ],
                **station,
            }
        ],
        "devices": [
            {
                "name": "rack",
                "protocol": "opcua",
                "station": "rack-a",
                "endpoint": endpoint,
                "poll_interval_ms": 200,
                "timeout_ms": 2000,
                "tags": rack_slot_tags(1, SLOTS),
            }
        ],
    }


def serial_of(slot: int) -> str:
    return f"BI-{slot:02d}" if slot % 8 != 5 else ""  # a few slots are empty


@pytest.fixture
async def rack() -> AsyncIterator[SimulatedBurnInRack]:
    server = SimulatedBurnInRack(slots=SLOTS, max_sessions=3)
    await server.start()
    for slot in range(1, SLOTS + 1):
        await server.set(f"Slot{slot:02d}.Serial", serial_of(slot))
        await server.set(f"Slot{slot:02d}.Temp", 40.0 + slot)
    yield server
    await server.stop()


async def test_a_32_slot_rack_on_one_session_tags_each_slot_with_its_own_unit(
    mosquitto: Mosquitto,
    rack: SimulatedBurnInRack,
    tmp_path: Path,
    subscriber: Subscriber,
) -> None:
    raw = rack_config(mosquitto, rack.endpoint, tmp_path, unit_timeout_s=2)
    config = Config.model_validate(raw)
    sub = subscriber

    def slot_readings() -> dict[int | None, list[dict[str, Any]]]:
        out: dict[int | None, list[dict[str, Any]]] = {}
        for r in sub.readings():
            out.setdefault(r.get("slot"), []).append(r)
        return out

    async with RunningService(config) as running:
        await async_wait_until(
            lambda: all(
                any(r.get("phase") == "after" for r in slot_readings().get(s, []))
                for s in range(1, SLOTS + 1)
                if serial_of(s)
            ),
            30,
            "every occupied slot past its 2 s timeout, still tagged",
        )
        await rack.set("Slot07.Serial", "")  # slot 7's unit leaves the rack
        await async_wait_until(
            lambda: any(r.get("slot") == 7 and r["unit_serial"] is None for r in sub.readings()),
            10,
            "slot 7 empty",
        )
        status = await running.service.status()
    assert rack.sessions_created == 1  # one session for 32 slots (the server takes 3)
    by_slot = slot_readings()
    assert set(by_slot) == set(range(1, SLOTS + 1))
    for slot, readings in by_slot.items():
        assert slot is not None
        serials = {r["unit_serial"] for r in readings}
        # Each slot's readings carry its own serial (none another's); slot 7 also none at the end.
        assert serials <= {serial_of(slot) or None, None}, (slot, serials)
        assert {r["station"] for r in readings} == {"rack-a"}
        assert {r["tag"][:6] for r in readings} == {f"slot{slot:02d}"}
        if serial_of(slot) and slot != 7:
            assert None not in serials  # present all along: never untagged, also past timeout
    # Past its 2 s timeout each unit ended incomplete, and its serial kept tagging readings.
    records = units(sub)
    assert {(u["serial"], u["slot"], u["verdict"], u["ended_by"]) for u in records} >= {
        ("BI-07", 7, "incomplete", "timeout")
    }
    seven = next(u for u in records if u["slot"] == 7)
    assert seven["station"] == "rack-a"
    assert seven["characteristics"]["slot07.temp"]["max"] == 47.0
    assert seven["characteristics"]["slot07.temp"]["in_spec"] is True
    slot7 = status["stations"]["rack-a.slot07"]
    assert (slot7["slot"], slot7["present_serial"]) == (7, None)
    assert status["stations"]["rack-a.slot08"]["present_serial"] == "BI-08"
    assert status["stations"]["rack-a.slot08"]["phase"] == "after"


async def test_a_crash_in_the_middle_of_a_slot_unit_keeps_it(
    mosquitto: Mosquitto,
    rack: SimulatedBurnInRack,
    tmp_path: Path,
    subscriber: Subscriber,
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(rack_config(mosquitto, rack.endpoint, tmp_path)))
    sub = subscriber

    def tagged_3() -> set[int]:
        return {
            r["seq"] for r in sub.readings() if r.get("slot") == 3 and r["unit_serial"] == "BI-03"
        }

    process = await start_collector(path)
    try:
        await async_wait_until(lambda: len(tagged_3()) >= 10, 20, "slot 3 tagged")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        before = max(sub.seqs())
        process = await start_collector(path)
        await async_wait_until(
            lambda: any(s > before for s in tagged_3()), 20, "slot 3 still BI-03 after restart"
        )
        await rack.set("Slot03.Serial", "")
        await async_wait_until(lambda: units(sub), 20, "slot 3's unit record")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
    records = [u for u in units(sub) if u["slot"] == 3]
    assert [(u["serial"], u["attempt"], u["ended_by"]) for u in records] == [
        ("BI-03", 1, "serial_cleared")
    ]
    # The count was stored with the readings it counts: the crash lost neither.
    assert records[0]["readings"] == len(tagged_3())
    assert_no_gaps(sub.seqs())


async def test_a_unit_marked_golden_over_http_is_golden_in_its_readings_and_record(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    subscriber: Subscriber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_UNIT_TOKEN", "line-token-1")
    config = modbus_tester_config(
        mosquitto, modbus_server.port, tmp_path, token_env="TEST_UNIT_TOKEN"
    )
    device = config.devices[0]
    codecs = {t.name: TagCodec.for_device(t, device) for t in device.tags}  # type: ignore[attr-defined,arg-type]
    for name, value in (("serial", "SN-M1"), ("result", 0), ("leak", 4.0)):
        await modbus_server.set_value(1, codecs[name], value)
    sub = subscriber
    auth = {"Authorization": "Bearer line-token-1"}
    async with RunningService(config) as running:
        ctx = running.service.context
        await async_wait_until(lambda: ctx.current_serial("ft-1") == "SN-M1", 10, "SN-M1")
        port = running.service.health_server.bound_port  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            url = "/stations/ft-1/unit"
            wrong = await http.post(url, json={"serial": "SN-X", "golden": True}, headers=auth)
            plain = await http.post(url, json={"serial": "SN-M1"}, headers=auth)
            marked = await http.post(url, json={"serial": "SN-M1", "golden": True}, headers=auth)
        await async_wait_until(
            lambda: any(
                r.get("golden", False) and r["unit_serial"] == "SN-M1" for r in sub.readings()
            ),
            10,
            "golden readings",
        )
        await modbus_server.set_value(1, codecs["result"], 1)
        await async_wait_until(lambda: units(sub), 20, "the record")
    assert wrong.status_code == plain.status_code == 409
    assert "not the unit at station" in wrong.json()["detail"]
    assert marked.status_code == 200
    assert marked.json()["golden"] is True
    (record,) = units(sub)
    assert (record["serial"], record["golden"]) == ("SN-M1", True)
    assert running.service.context.status()["ft-1"]["figures"]["golden"] == 1


async def test_a_modbus_rack_with_a_register_block_per_slot_tags_each_slot(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    subscriber: Subscriber,
) -> None:
    slots = {"first": 1, "last": 4}
    config = Config.model_validate(
        {
            **base(mosquitto, tmp_path),
            "stations": [
                {
                    "name": "nest",
                    "operation": "flash",
                    "slots": slots,
                    "serial_source": {"device": "plc", "tag": "n{slot}.serial"},
                }
            ],
            "devices": [
                {
                    "name": "plc",
                    "protocol": "modbus_tcp",
                    "station": "nest",
                    "host": "127.0.0.1",
                    "port": modbus_server.port,
                    "poll_interval_ms": 50,
                    "tags": [
                        {
                            "name": "n{slot}.current",
                            "slots": slots,
                            "table": "holding_register",
                            "address": 100,
                            "stride": 10,
                        },
                        {
                            "name": "n{slot}.serial",
                            "slots": slots,
                            "table": "holding_register",
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
    device = config.devices[0]
    for tag in device.tags:  # type: ignore[attr-defined]
        codec = TagCodec.for_device(tag, device)  # type: ignore[arg-type]
        slot = tag.slot
        await modbus_server.set_value(
            1, codec, f"N-{slot}" if tag.name.endswith("serial") else 100 + slot
        )
    sub = subscriber

    def currents() -> set[tuple[Any, Any, Any]]:
        return {
            (r.get("slot"), r["unit_serial"], r["value"])
            for r in sub.readings()
            if r["tag"].endswith(".current")
        }

    async with RunningService(config):
        await async_wait_until(
            lambda: {(s, f"N-{s}", 100 + s) for s in range(1, 5)} <= currents(),
            15,
            "each nest's current with its own serial",
        )
    # Register block per slot: nest n's current is at 100 + (n - 1) * 10, its serial 2 later.
    assert {r for r in currents() if r[1] is not None} == {
        (s, f"N-{s}", 100 + s) for s in range(1, 5)
    }
    assert {r["station"] for r in sub.readings()} == {"nest"}
