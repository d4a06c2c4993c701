"""The per-reading cost of tagging (collector.context.tagging.StationContext.tag), in-process:

- ``plain``: one station, one device of 100 tags, the tester's serial and verdict among them
  (the reference load's shape: a device is one station);
- ``rack``: a 32-slot rack on one device (5 tags a slot + the door: 161 readings a poll),
  every slot a station with its own serial, each reading routed to its slot's station through
  the precomputed (device, tag) map;
- ``rack_signals``: the same with a verdict per slot and a key characteristic per slot.

Every poll has a new ``ts`` (the worst case: a unit look-up per station per poll). Prints
CPU nanoseconds per reading (process time: the machine may be shared), best of ``--repeat``
runs. Usage: ``python -m bench.tagging [--polls N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from collector.config import Config
from collector.context.tagging import StationContext
from contract.records import Reading

SLOTS = 32


def _base() -> dict[str, Any]:
    return {"collector": {"id": "b", "site": "s", "line": "l"}, "buffer": {"path": "/tmp/x.db"}}


def plain_config() -> Config:
    tags: list[dict[str, Any]] = [
        {"name": f"t{i:03d}", "table": "holding_register", "address": i} for i in range(98)
    ]
    tags += [
        {"name": "result", "table": "holding_register", "address": 100},
        {
            "name": "serial",
            "table": "holding_register",
            "address": 110,
            "type": "string",
            "count": 8,
        },
    ]
    return Config.model_validate(
        {
            **_base(),
            "stations": [
                {
                    "name": "ft-1",
                    "operation": "ft",
                    "serial_source": {"device": "d", "tag": "serial"},
                    "verdict": {"device": "d", "tag": "result", "map": {1: "pass"}},
                    "key_characteristics": [{"device": "d", "tag": "t000"}],
                }
            ],
            "devices": [
                {
                    "name": "d",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "station": "ft-1",
                    "tags": tags,
                }
            ],
        }
    )


def rack_config(signals: bool) -> Config:
    slots = {"first": 1, "last": SLOTS}
    station: dict[str, Any] = {
        "name": "rack",
        "operation": "burn-in",
        "slots": slots,
        "serial_source": {"device": "r", "tag": "slot{slot:02d}.serial"},
    }
    if signals:
        station["verdict"] = {"device": "r", "tag": "slot{slot:02d}.result", "map": {1: "pass"}}
        station["key_characteristics"] = [{"device": "r", "tag": "slot{slot:02d}.temp"}]
    tags: list[dict[str, Any]] = [
        {"name": f"slot{{slot:02d}}.{v}", "slots": slots, "namespace_uri": "urn:x", "id": f"s={v}"}
        for v in ("temp", "voltage", "current", "serial", "result")
    ]
    tags.append({"name": "door", "namespace_uri": "urn:x", "id": "s=door"})
    return Config.model_validate(
        {
            **_base(),
            "stations": [station],
            "devices": [
                {"name": "r", "protocol": "opcua", "endpoint": "opc.tcp://x:1", "station": "rack"}
                | {"tags": tags}
            ],
        }
    )


def poll_values(config: Config) -> list[tuple[str, Any]]:
    device = config.devices[0]
    values: list[tuple[str, Any]] = []
    for tag in device.tags:  # type: ignore[attr-defined]
        name = tag.name
        if name.endswith("serial"):
            values.append((name, f"SN-{name}"))  # every slot occupied, the whole run
        elif name.endswith("result"):
            values.append((name, 0))
        else:
            values.append((name, 21.5))
    return values


def per_reading_ns(config: Config, polls: int, repeat: int) -> float:
    device = config.devices[0].name
    values = poll_values(config)
    best = float("inf")
    for _ in range(repeat):
        ctx = StationContext(config.stations, config.devices, clock=lambda: 0.0)
        batches = [[Reading(1000.0 + k, tag, value) for tag, value in values] for k in range(polls)]
        start = time.process_time()
        for readings in batches:
            ctx.tag(device, readings)
        elapsed = time.process_time() - start
        best = min(best, elapsed / (polls * len(values)))
    return best * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    figures = {
        "plain_ns_per_reading": per_reading_ns(plain_config(), args.polls, args.repeat),
        "rack_ns_per_reading": per_reading_ns(rack_config(False), args.polls, args.repeat),
        "rack_signals_ns_per_reading": per_reading_ns(rack_config(True), args.polls, args.repeat),
    }
    print(json.dumps({k: round(v, 1) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
