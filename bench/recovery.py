"""Recovery and hand-over figures, against real parts (mosquitto, a pymodbus server, an asyncua
server), at the collector's default reconnect settings:

- **peer back → first delivered reading**: the broker, the Modbus device or the OPC-UA server
  is down for ``--outage`` seconds (long enough for the backoff to have grown to several
  seconds), comes back on the same port, and the time until the first reading read after it
  is back reaches a subscriber;
- **OPC-UA subscribed change → broker**: source timestamp to arrival at the subscriber, for
  ``--changes`` changes at the default publishing interval.

    .venv/bin/python -m bench.recovery [--outage 8] [--repeat 3] [--changes 200] [--json FILE]

Figures are printed (and written as JSON); docs/performance.md records them. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.run import percentile
from collector.config import Config
from collector.service import Service
from drivers.modbus.sim import SimulatedModbusServer
from drivers.opcua.sim import SimulatedBurnInRack
from tests.helpers import TOPIC, Mosquitto, Subscriber, config_dict, set_tester


class TimedSubscriber(Subscriber):
    """Every reading received, with its arrival time."""

    def __init__(self, broker: Mosquitto) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        super().__init__(broker, TOPIC, client_id="bench-recovery")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        for reading in json.loads(msg.payload).get("readings", ()):
            self.received.append((now, reading))

    def first_after(self, moment: float, match: Callable[[dict[str, Any]], bool]) -> float | None:
        return next((t for t, r in list(self.received) if t >= moment and match(r)), None)


async def wait_for_arrival(
    sub: TimedSubscriber, moment: float, match: Callable[[dict[str, Any]], bool], limit: float = 120
) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        arrived = sub.first_after(moment, match)
        if arrived is not None:
            return arrived - moment
        await asyncio.sleep(0.01)
    raise TimeoutError("no reading arrived")


def rack_device(rack: SimulatedBurnInRack) -> dict[str, Any]:
    node = "s=Rack1.Slot01.Temp"
    uri = "urn:shopfloor-collector:demo:burn-in-rack"
    return {
        "name": "rack-1",
        "protocol": "opcua",
        "endpoint": rack.endpoint,
        "tags": [
            {"name": "temp", "namespace_uri": uri, "id": node},
            {"name": "temp_sub", "namespace_uri": uri, "id": node, "collect": "subscribe"},
        ],
    }


async def measure(work: Path, outage_s: float, changes: int) -> dict[str, Any]:
    broker = Mosquitto(work / "broker")
    broker.start()
    modbus = SimulatedModbusServer(unit_ids=[1, 2])
    await modbus.start()
    rack = SimulatedBurnInRack(slots=1)
    await rack.start()
    raw = config_dict(broker, modbus.port, work / "b.db")
    for key in ("keepalive_s", "reconnect_min_ms", "reconnect_max_ms"):
        raw["mqtt"].pop(key, None)  # the defaults
    raw["devices"].append(rack_device(rack))
    config = Config.model_validate(raw)
    await set_tester(modbus, config, voltage=1.0, serial="SN1", result=0)
    sub = TimedSubscriber(broker)
    service = Service(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    figures: dict[str, Any] = {}
    try:
        await asyncio.wait_for(service.ready.wait(), 30)
        await wait_for_arrival(sub, 0.0, lambda r: r["tag"] == "temp_sub")

        # The broker.
        broker.stop()
        await asyncio.sleep(outage_s)
        broker.start()  # returns once the port is open
        back = time.time()
        figures["broker_s"] = await wait_for_arrival(sub, back, lambda r: True)

        # The Modbus device: a value only the device that is back has.
        await modbus.stop()
        await asyncio.sleep(outage_s)
        modbus = SimulatedModbusServer(unit_ids=[1, 2], port=modbus.port)
        await modbus.start()
        back = time.time()
        await set_tester(modbus, config, voltage=9.75)
        figures["modbus_s"] = await wait_for_arrival(
            sub, back, lambda r: r["tag"] == "voltage" and r["value"] == 9.75
        )

        # The OPC-UA server.
        await rack.stop()
        await asyncio.sleep(outage_s)
        rack = SimulatedBurnInRack(slots=1, port=rack.port)
        await rack.start()
        back = time.time()
        await rack.set("Slot01.Temp", 77.5)
        figures["opcua_s"] = await wait_for_arrival(
            sub, back, lambda r: r["tag"] in ("temp", "temp_sub") and r["value"] == 77.5
        )

        # Subscribed changes: source timestamp to the broker.
        await asyncio.sleep(2.0)
        start = time.time()
        for i in range(changes):
            await rack.set("Slot01.Temp", 100.0 + i)
            await asyncio.sleep(0.05 + (i % 7) * 0.01)  # not in step with the publishing
        await asyncio.sleep(2.0)
        latencies = [
            arrived - datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
            for arrived, r in list(sub.received)
            if arrived >= start and r["tag"] == "temp_sub" and r["value"] >= 100.0
        ]
        figures["opcua_change_ms"] = {
            "changes": changes,
            "received": len(latencies),
            "p50": round(1000 * (percentile(latencies, 0.50) or 0), 1),
            "p95": round(1000 * (percentile(latencies, 0.95) or 0), 1),
            "max": round(1000 * max(latencies, default=0), 1),
        }
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        sub.close()
        await rack.stop()
        await modbus.stop()
        broker.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=8.0, help="seconds each peer is down")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-recovery-") as folder:
            figures = asyncio.run(measure(Path(folder), args.outage, args.changes))
        runs.append(figures)
        print(
            f"peer back -> first delivered reading (outage {args.outage:g} s): "
            f"broker {figures['broker_s']:.2f} s, Modbus device {figures['modbus_s']:.2f} s, "
            f"OPC-UA server {figures['opcua_s']:.2f} s"
        )
        change = figures["opcua_change_ms"]
        print(
            f"OPC-UA subscribed change -> broker ({change['received']} of {change['changes']}): "
            f"p50 {change['p50']} ms, p95 {change['p95']} ms, max {change['max']} ms"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"outage_s": args.outage, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
