"""The benchmark's consumer, a process of its own: it subscribes (QoS 1, durable session) and
appends one line per reading received: ``seq arrival_epoch read_epoch``. The figures are
computed from that file by bench/run.py, never inside the collector.

    python -m bench.subscriber --port 1883 --topic 'collector/#' --out arrivals.txt
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract.decode import expand_polls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ready", help="touch this file once subscribed")
    args = parser.parse_args()
    out = open(args.out, "w", buffering=1 << 20)  # noqa: SIM115 - closed at exit
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cache: dict[str, float] = {}

    def read_ts(text: str) -> float:
        # Many readings of one poll share their ts: parse each distinct one once.
        value = cache.get(text)
        if value is None:
            if len(cache) > 100_000:
                cache.clear()
            value = cache[text] = datetime.fromisoformat(text).timestamp()
        return value

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        body = orjson.loads(msg.payload)
        if "polls" in body:  # schema 2: value i of a poll has seq poll.seq + i
            if body.get("schema") == 3:
                # seq and ts a poll takes from the previous one; its values in value_list
                expand_polls(body["polls"])
            lines = [
                f"{p['seq'] + i} {now:.6f} {read_ts(p['ts']):.6f}\n"
                for p in body["polls"]
                # keyed or positional (docs/messages.md): the count is what matters here
                for i in range(len(p["values"] if "values" in p else p["value_list"]))
            ]
        else:
            lines = [f"{r['seq']} {now:.6f} {read_ts(r['ts']):.6f}\n" for r in body["readings"]]
        out.write("".join(lines))

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(args.topic, qos=1)

    def on_subscribe(*_: Any) -> None:
        if args.ready:
            open(args.ready, "w").close()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="bench-consumer",
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.reconnect_delay_set(0.1, 0.5)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    while not stop.wait(0.2):
        out.flush()
    client.loop_stop()
    client.disconnect()
    out.close()


if __name__ == "__main__":
    main()
