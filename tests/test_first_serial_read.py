"""Nothing untagged at start-up (issue 24, item 5; collector.context.firstread): a real
asyncua rack of 32 slots in subscription mode, a real broker. Readings that come before a
slot's first serial read wait for it and go out with that slot's unit, from the very first
reading; a slot whose serial is never read releases what it held after
``tagging.first_serial_wait_s``, untagged and counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector.config import Config
from drivers.opcua.sim import SimulatedBurnInRack, rack_slot_tags
from tests.helpers import TOPIC, Mosquitto, RunningService, Subscriber, async_wait_until

SLOTS = 32
BAD_NOT_READABLE = 0x803A0000  # BadNotReadable


def serial_of(slot: int) -> str:
    return f"BI-{slot:02d}" if slot % 8 != 5 else ""  # a few slots are empty


@pytest.fixture
async def subscriber(mosquitto: Mosquitto) -> AsyncIterator[Subscriber]:
    sub = Subscriber(mosquitto, TOPIC)
    yield sub
    sub.close()


@pytest.fixture
async def rack() -> AsyncIterator[SimulatedBurnInRack]:
    """Temperatures written after the serials (fresh source times); Voltage and Current keep
    the values (and source times) they had when the server started, before any serial."""
    server = SimulatedBurnInRack(slots=SLOTS)
    await server.start()
    for slot in range(1, SLOTS + 1):
        await server.set(f"Slot{slot:02d}.Serial", serial_of(slot))
    for slot in range(1, SLOTS + 1):
        await server.set(f"Slot{slot:02d}.Temp", 40.0 + slot)
    yield server
    await server.stop()


def rack_config(
    broker: Mosquitto,
    rack: SimulatedBurnInRack,
    tmp_path: Path,
    serial_collect: str,
    **tagging: Any,
) -> Config:
    tags = rack_slot_tags(1, SLOTS)
    for tag in tags:
        if tag["name"].endswith(".serial"):
            tag["collect"] = serial_collect
    return Config.model_validate(
        {
            "collector": {"id": "pc1", "site": "plant-a", "line": "line-1"},
            "buffer": {"path": str(tmp_path / "b.db")},
            "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5},
            "health": {"port": 0},
            "tagging": tagging,
            "stations": [
                {
                    "name": "rack-a",
                    "operation": "burn-in",
                    "slots": {"first": 1, "last": SLOTS},
                    "serial_source": {"device": "rack", "tag": "slot{slot:02d}.serial"},
                }
            ],
            "devices": [
                {
                    "name": "rack",
                    "protocol": "opcua",
                    "station": "rack-a",
                    "endpoint": rack.endpoint,
                    "collect": "subscribe",
                    # A slow poll: a polled serial is read a while after the subscription's
                    # first values have come.
                    "poll_interval_ms": 1000,
                    "publishing_interval_ms": 50,
                    "sampling_interval_ms": 10,
                    "timeout_ms": 2000,
                    "tags": tags,
                }
            ],
        }
    )


@pytest.mark.parametrize("serial_collect", ["subscribe", "poll"])
async def test_every_reading_of_an_occupied_slot_carries_its_unit_from_the_first(
    mosquitto: Mosquitto,
    rack: SimulatedBurnInRack,
    tmp_path: Path,
    subscriber: Subscriber,
    serial_collect: str,
) -> None:
    config = rack_config(mosquitto, rack, tmp_path, serial_collect)
    sub = subscriber
    variables = ("temp", "voltage", "current")

    def first_values() -> bool:
        seen = {(r["slot"], r["tag"].split(".")[1]) for r in sub.readings()}
        return all((s, v) in seen for s in range(1, SLOTS + 1) for v in variables)

    async with RunningService(config) as running:
        await async_wait_until(first_values, 30, "every slot's first values")
        status = await running.service.status()
        metrics = (await running.service.metrics()).decode()
    readings = [r for r in sub.readings() if not r["tag"].endswith(".serial")]
    assert len(readings) >= SLOTS * len(variables)
    untagged = [
        (r["slot"], r["tag"]) for r in readings if serial_of(r["slot"]) and r["unit_serial"] is None
    ]
    assert untagged == []  # 0 untagged, from the first reading on
    for r in readings:
        assert r["unit_serial"] == (serial_of(r["slot"]) or None), r
    hold = status["first_serial_hold"]
    assert hold["waiting_stations"] == []
    assert hold["held_total"] >= SLOTS * len(variables)
    assert (hold["released_total"], hold["released_untagged_total"], hold["holding"]) == (
        hold["held_total"], 0, 0,
    )  # fmt: skip
    assert f"collector_first_serial_released_total {hold['held_total']}.0" in metrics
    assert "collector_first_serial_released_untagged_total 0.0" in metrics
    assert status["health"]["status"] == "ok", status["health"]


async def test_a_slot_whose_serial_never_comes_releases_its_readings_after_the_bound(
    mosquitto: Mosquitto,
    rack: SimulatedBurnInRack,
    tmp_path: Path,
    subscriber: Subscriber,
) -> None:
    """Slot 3's serial node answers BadNotReadable: its first serial read never comes. Its
    readings wait ``first_serial_wait_s`` (1 s), then go out with no unit, counted and
    said on /health; every other slot is tagged from its first reading."""
    await rack.set("Slot03.Serial", "", status=BAD_NOT_READABLE)
    config = rack_config(mosquitto, rack, tmp_path, "subscribe", first_serial_wait_s=1)
    sub = subscriber

    def slot3() -> list[dict[str, Any]]:
        return [r for r in sub.readings() if r["slot"] == 3 and not r["tag"].endswith("serial")]

    async with RunningService(config) as running:
        service = running.service
        await async_wait_until(lambda: len(slot3()) >= 3, 30, "slot 3's readings, released")
        await rack.set("Slot03.Temp", 77.0)  # after the bound: not held, no unit
        await async_wait_until(
            lambda: any(r["value"] == 77.0 for r in slot3()), 10, "slot 3's next temperature"
        )
        status = await service.status()
        metrics = (await service.metrics()).decode()
    hold = status["first_serial_hold"]
    # temp, voltage, current as first received, and the serial node's own bad reading
    assert hold["released_untagged_total"] == 4
    assert hold["released_total"] == hold["held_total"] - 4
    assert {r["unit_serial"] for r in slot3()} == {None}
    assert "collector_first_serial_released_untagged_total 4.0" in metrics
    assert (
        "4 reading(s) released untagged at start-up: no first serial read within the bounds "
        "(tagging.first_serial_*) at rack-a.slot03"
    ) in status["health"]["reasons"]
    others = [r for r in sub.readings() if r["slot"] != 3 and serial_of(r["slot"])]
    assert others
    assert {r["unit_serial"] for r in others if not r["tag"].endswith("serial")} == {
        serial_of(s) for s in range(1, SLOTS + 1) if serial_of(s) and s != 3
    }
