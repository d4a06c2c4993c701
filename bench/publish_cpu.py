"""The CPU of the MQTT publisher alone (collector/delivery/mqtt.py), per message.

    .venv/bin/python -m bench.publish_cpu                     # 2 x 1000 messages, then idle
    .venv/bin/python -m bench.publish_cpu --big 30000000      # how long one large message
                                                              # holds up the event loop

A private mosquitto on 127.0.0.1 and one ``MqttPublisher`` in this process (MQTT v5, QoS 1,
topic aliases as the broker offers them): every 10 ms two messages of ``--bytes`` are
published together and both PUBACKs awaited, the reference scenario's burst. The process's
CPU (every thread: paho's network thread too, where there is one) over the round, per
message, from ``getrusage`` (user and system apart), and the context switches. The same
rounds without the publishes (``idle``) give the event loop's own cost of the 10 ms ticks,
to subtract. Run it from a checkout's root to measure that checkout's publisher (as
bench.alternate does with bench.run).

``--big N``: one message of N bytes while a task ticks every 2 ms; prints how long
``publish`` took (paho builds the packet there) and the event loop's longest gap until the
PUBACK.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from collector.config import MqttConfig, MqttVersion
from collector.delivery.mqtt import MqttPublisher
from collector.delivery.publisher import MqttStatus
from tests.helpers import Mosquitto


async def _connected(port: int) -> tuple[MqttPublisher, asyncio.Task[None]]:
    config = MqttConfig(host="127.0.0.1", port=port, version=MqttVersion.V5)
    publisher = MqttPublisher(config, "bench", "bench/status", MqttStatus())
    task = asyncio.create_task(publisher.run())
    deadline = time.monotonic() + 10
    while not publisher.connected:
        if time.monotonic() > deadline:
            raise RuntimeError("the publisher did not connect within 10 s")
        await asyncio.sleep(0.01)
    return publisher, task


async def _rounds(port: int, messages: int, size: int) -> None:
    publisher, task = await _connected(port)
    payload = b"x" * size
    for idle in (False, True):
        for _ in range(50):  # warm-up: aliases named, paho's paths taken once
            await asyncio.gather(*(publisher.publish("bench/readings", payload) for _ in range(2)))
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(messages // 2):
            if not idle:
                await asyncio.gather(
                    *(publisher.publish("bench/readings", payload) for _ in range(2))
                )
            await asyncio.sleep(0.01)
        after = resource.getrusage(resource.RUSAGE_SELF)
        user = (after.ru_utime - before.ru_utime) / messages * 1e6
        system = (after.ru_stime - before.ru_stime) / messages * 1e6
        switches = (after.ru_nvcsw - before.ru_nvcsw, after.ru_nivcsw - before.ru_nivcsw)
        print(
            f"{'idle' if idle else 'publish'}: {user + system:.1f} µs of CPU per message "
            f"(user {user:.1f}, system {system:.1f}); context switches voluntary "
            f"{switches[0]}, involuntary {switches[1]}; "
            f"{messages} messages of {size} bytes in {time.perf_counter() - wall:.1f} s",
            flush=True,
        )
    await publisher.close()
    await asyncio.wait_for(task, 5)


async def _big(port: int, size: int) -> None:
    publisher, task = await _connected(port)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.1)
    gaps.clear()
    start = time.perf_counter()
    future = publisher.publish("bench/big", b"x" * size)
    queued = time.perf_counter() - start
    ack = await future
    print(
        f"one message of {size} bytes: publish() {queued * 1000:.1f} ms, PUBACK ({ack.name}) "
        f"after {(time.perf_counter() - start) * 1000:.0f} ms; the event loop's longest gap "
        f"{max(gaps, default=0) * 1000:.1f} ms, gaps over 5 ms: "
        f"{[round(g * 1000, 1) for g in gaps if g > 0.005]}",
        flush=True,
    )
    ticking.cancel()
    await publisher.close()
    await asyncio.wait_for(task, 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.publish_cpu", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--bytes", type=int, default=2500, help="payload of each message")
    parser.add_argument("--big", type=int, default=None, help="one message of this many bytes")
    args = parser.parse_args(argv)
    print(f"bench.publish_cpu: {os.getcwd()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="publish-cpu-") as tmp:
        broker = Mosquitto(Path(tmp))
        broker.start()
        try:
            if args.big is not None:
                asyncio.run(_big(broker.port, args.big))
            else:
                asyncio.run(_rounds(broker.port, args.messages, args.bytes))
        finally:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
