"""A longer soak: real broker, simulator and collector process, faults at random, then a check.

    .venv/bin/python -m tests.faults.soak --minutes 30

Every 5-30 s one fault: the broker killed (SIGKILL) and restarted, or the collector killed
(SIGKILL) and restarted, or the collector stopped (SIGTERM) and restarted. At the end the
collector is stopped cleanly and a consumer that was subscribed throughout must have every seq.
Prints a summary; exits 1 on a gap.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import tempfile
import time
from pathlib import Path

from collector.buffer import Outbox
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import TOPIC, Mosquitto, Subscriber, start_collector, wait_until, write_config


async def soak(minutes: float, seed: int) -> int:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="collector-soak-"))
    broker = Mosquitto(work / "broker", "autosave_interval 1\nautosave_on_changes true\n")
    broker.start()
    server = SimulatedModbusServer(unit_ids=[1, 2])
    await server.start()
    config = write_config(work / "c.yaml", broker, server.port, work / "b.db")
    sub = Subscriber(broker, TOPIC, client_id="soak-consumer")
    faults: dict[str, int] = {"broker": 0, "kill": 0, "term": 0}
    process = await start_collector(config)
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        await asyncio.sleep(rng.uniform(5, 30))
        fault = rng.choice(list(faults))
        faults[fault] += 1
        if fault == "broker":
            assert broker.process is not None
            broker.process.send_signal(signal.SIGKILL)
            broker.process.wait(10)
            await asyncio.sleep(rng.uniform(0.5, 5))
            broker.start()
        else:
            process.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)
            process = await start_collector(config)
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), 30)
    box = Outbox(work / "b.db", 5_000_000)
    last = box.last_seq
    box.close()
    process = await start_collector(config)  # deliver what the last stop left buffered
    await asyncio.to_thread(
        wait_until, lambda: sub.has_all(last), 60, "the consumer to have every seq"
    )
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), 30)
    seqs = sub.seqs()
    missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
    print(
        f"soak {minutes} min, faults {faults}: {len(set(seqs))} readings, "
        f"{len(seqs) - len(set(seqs))} duplicates, {len(missing)} missing {missing[:10]}"
    )
    sub.close()
    broker.stop()
    await server.stop()
    return 1 if missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    return asyncio.run(soak(args.minutes, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
