"""Parking under a flood of unknown metadata versions (docs/performance.md, "Parking"):

    .venv/bin/python -m bench.parking                      # 100,000 messages
    .venv/bin/python -m bench.parking --messages 20000 --json out.json
    .venv/bin/python -m bench.parking --quick              # 2,000 (a smoke test)
    .venv/bin/python -m bench.parking --quarantine-max-rows 100000000   # quarantine unbounded

``collector store run`` (a subprocess, SQLite, store.yaml defaults but the port) on a private
mosquitto; ``--messages`` readings messages are published at QoS 1, each a positional poll of
10 values naming a meta version of its own that no one publishes (what a broken or hostile
publisher sends: issue 24 saw 100,000 of them grow a database from 10 to 59 MB with 100,000
log lines and nothing on /health). Printed once the store has taken them all: the database
file's size before and after (WAL included), the parked rows and bytes at the end, the
messages dropped from parking into quarantine, the quarantine's rows and bytes at the end and
what its bound pruned (``ingest.quarantine_max_*``: store.yaml's defaults unless given),
/health's status and the store's log lines about parking and quarantine. Figures are printed
(and written as JSON with --json FILE), never asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.helpers import Mosquitto, free_port, port_open, wait_until

TOPIC = "collector/plant/line/pc9/readings"


def message(i: int) -> bytes:
    """A positional readings message naming version ``i`` (hex), which nobody publishes: a
    schema-3 poll by position, which names its device by that version alone (the store
    parks it under (collector, "/", meta): store.metabook.BY_META)."""
    return orjson.dumps({
        "schema": 3, "collector": "pc9", "outbox": "0123456789abcdef",
        "polls": [{"seq": 10 * i + 1, "ts": 1_795_000_000_500, "meta": f"{i:08x}",
                   "station": "ft-1", "unit_serial": "S-1", "attempt": 1,
                   "v": [float(v) for v in range(10)]}],
    })  # fmt: skip


def publish_all(client: Any, topic: str, payloads: Iterable[bytes], chunk: int = 500) -> None:
    """Publish at QoS 1 as fast as the broker takes them: a chunk at a time, each chunk
    acknowledged before the next (a message paho did not queue is sent again)."""
    pending = list(payloads)
    while pending:
        infos = [(p, client.publish(topic, p, qos=1)) for p in pending[:chunk]]
        pending = pending[chunk:]
        for payload, info in infos:
            try:
                info.wait_for_publish(60)
            except ValueError:  # not queued: the outgoing queue was full at that moment
                pending.append(payload)


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def _wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _metric(http: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{http}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


def run(total: int, workdir: Path, ingest: dict[str, Any] | None = None) -> dict[str, Any]:
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    broker = Mosquitto(workdir / "mosquitto")
    broker.start()
    http = free_port()
    db = workdir / "store.db"
    config = workdir / "store.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": f"sqlite:///{db}"},
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "bench-parking"},
        "http": {"port": http},
        "ingest": ingest or {},
    }))  # fmt: skip
    log_path = workdir / "store.log"
    log = log_path.open("ab")
    command = [sys.executable, "-m", "collector", "store", "run", "--config", str(config)]
    store = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(http), 30, "store")
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{http}/health", timeout=10).json()["mqtt"][
                "connected"
            ],
            30,
            "store connected",
        )
        before = _db_bytes(db)
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-flood",
                                protocol=mqtt.MQTTv5)  # fmt: skip
        publisher.max_queued_messages_set(0)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        started = time.perf_counter()
        publish_all(publisher, TOPIC, (message(i) for i in range(total)))
        wait_until(lambda: _metric(http, "store_parked_total") >= total, 600, "every message taken")
        wall = time.perf_counter() - started
        health = httpx.get(f"http://127.0.0.1:{http}/health", timeout=10).json()
        dropped = _metric(http, "store_parked_dropped_total")
        pruned = _metric(http, "store_quarantine_pruned_total")
        publisher.loop_stop()
        publisher.disconnect()
        store.terminate()
        store.wait(30)
    finally:
        if store.poll() is None:
            store.kill()
            store.wait(30)
        log.close()
        broker.stop()
    text = log_path.read_text().splitlines()
    lines = [line for line in text if "parked" in line]
    quarantined = [line for line in text if "quarantined a message" in line]
    return {
        "messages": total,
        "message_bytes": len(message(0)),
        "seconds": round(wall, 1),
        "db_mb_before": round(before / 1e6, 2),
        "db_mb_after": round(_db_bytes(db) / 1e6, 2),
        "of_which_wal_mb": round(_wal_bytes(db) / 1e6, 2),
        "parked_messages": health["parking"]["messages"],
        "parked_bytes": health["parking"]["bytes"],
        "dropped_into_quarantine": int(dropped),
        "quarantine_rows": health["quarantine"]["rows"],
        "quarantine_bytes": health["quarantine"]["bytes"],
        "quarantine_max_rows": health["quarantine"]["max_rows"],
        "quarantine_pruned": int(pruned),
        "health_status": health["status"],
        "health_problems": [p for p in health["problems"] if p.startswith("parking")],
        "health_warnings": health["warnings"],
        "log_lines_about_parking": len(lines),
        "log_lines": lines,
        "log_lines_about_quarantine": len(quarantined),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="2,000 messages")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--quarantine-max-rows", type=int, help="ingest.quarantine_max_rows (default: store's)"
    )
    args = parser.parse_args()
    total = 2_000 if args.quick else args.messages
    ingest = {}
    if args.quarantine_max_rows is not None:
        ingest["quarantine_max_rows"] = args.quarantine_max_rows
    with tempfile.TemporaryDirectory() as folder:
        figures = run(total, Path(folder), ingest)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
