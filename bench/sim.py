"""Modbus TCP simulators for the benchmark, in a process of their own (so that their CPU is
not the collector's): ``servers`` pymodbus servers on consecutive free ports, each serving
unit ids 1..``units``. Prints the ports as JSON on one line, then serves until SIGTERM.

    python -m bench.sim --servers 2 --units 25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from drivers.modbus.sim import SimulatedModbusServer


async def serve(servers: int, units: int) -> None:
    started = []
    for _ in range(servers):
        server = SimulatedModbusServer(unit_ids=range(1, units + 1), size=200)
        await server.start()
        started.append(server)
    print(json.dumps([s.port for s in started]), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in started:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--units", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(serve(args.servers, args.units))


if __name__ == "__main__":
    main()
