"""The store hand-over's cost and speed (issue 23), side by side in one run:

- **collector CPU, ``mqtt.delivery: store`` against ``broker``** on the reference scenario of
  bench/run.py (10 devices x 100 registers every 100 ms = 10,000 readings/s): the same line,
  run in turn with each setting (``--repeat`` times, alternating, so that the machine's load
  falls on both alike); with ``store`` a central store (SQLite, its defaults) acknowledges.
  Also the store's acknowledgement traffic (topic + payload bytes on ``{base}/ack``) per
  reading, and the store's own CPU.
- **time to heal a 10,000-reading hole** (``--hole``): under the same load, the store is
  frozen (SIGSTOP) and its session dropped (a connect with its client id and a clean start):
  the broker takes the next readings (PUBACK) for no one, the collector still holds them.
  Then the store is thawed (SIGCONT) and reconnects; the
  figures are from then to the hole being seen (its /gaps), to the first acknowledgement that
  asks for it (``resend``, after ``acks.resend_after_s``, 5 s by default), and to the hole
  being filled. Every setting is the default.

    .venv/bin/python -m bench.handover [--repeat 3] [--measure 20] [--hole 10000] [--json F]

Figures are printed; docs/performance.md records them. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import Line, Workload, cpu_seconds, running
from tests.helpers import Subscriber, wait_until
from tests.store_fixtures import forget_session

REFERENCE = Workload(10, 100, 100)
ACK_TOPIC = "collector/lab/bench/bench/ack"


class AckCounter(Subscriber):
    """Every store acknowledgement to the bench's collector: its arrival time and bytes."""

    def __init__(self, line: Line) -> None:
        self.arrived: list[tuple[float, dict[str, Any]]] = []
        self.bytes = 0
        super().__init__(line.broker, ACK_TOPIC, client_id="bench-acks")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._lock:
            self.arrived.append((time.time(), json.loads(msg.payload)))
            self.bytes += len(msg.topic) + len(msg.payload)

    def since(self, moment: float) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(t, a) for t, a in self.arrived if t >= moment]


def steady(work: Path, delivery: str, warmup_s: float, measure_s: float) -> dict[str, Any]:
    """Collector CPU (and the store's) over ``measure_s`` of the reference load."""
    with running(work, REFERENCE, delivery=delivery) as line:
        acks = AckCounter(line) if delivery == "store" else None
        time.sleep(warmup_s)
        status0 = line.status() or {}
        store_pid = line.store.process.pid if line.store and line.store.process else None
        t0, cpu0 = time.time(), cpu_seconds(line.pid)
        store0 = cpu_seconds(store_pid) if store_pid else 0.0
        bytes0 = acks.bytes if acks else 0
        time.sleep(measure_s)
        t1, cpu1 = time.time(), cpu_seconds(line.pid)
        store1 = cpu_seconds(store_pid) if store_pid else 0.0
        status1 = line.status() or {}
        bytes1 = acks.bytes if acks else 0
        if acks is not None:
            acks.close()
    delivered = (status1["mqtt"]["readings_delivered"] or 0) - (
        status0["mqtt"]["readings_delivered"] or 0
    )
    messages = status1["mqtt"]["messages_accepted"] - status0["mqtt"]["messages_accepted"]
    return {
        "delivery": delivery,
        "messages_per_s": messages / (t1 - t0),
        "cpu_pct_of_one_core": 100 * (cpu1 - cpu0) / (t1 - t0),
        "store_cpu_pct_of_one_core": 100 * (store1 - store0) / (t1 - t0) if store_pid else None,
        "readings_per_s": delivered / (t1 - t0),
        "ack_bytes_per_reading": (bytes1 - bytes0) / delivered if acks and delivered else None,
        "buffered_at_end": status1["buffer"]["depth"],
        "waiting_for_store_at_end": status1["mqtt"].get("store_waiting_readings"),
    }


def heal(work: Path, hole: int) -> dict[str, Any]:
    """Make a hole of about ``hole`` readings and time its healing."""
    with running(work, REFERENCE, delivery="store") as line:
        assert line.store is not None
        store = line.store
        acks = AckCounter(line)
        wait_until(lambda: acks.arrived, 30, "the first store acknowledgement")
        assert store.process is not None
        # The store frozen (SIGSTOP) and its session taken over with a clean start and
        # dropped: what the broker takes (PUBACK) from then on goes to nobody. (What it had
        # sent the frozen store before waits in the store's socket and is stored.) Thawed,
        # the store sees its connection closed and reconnects at once.
        store.process.send_signal(signal.SIGSTOP)
        forget_session(line.broker, "store")
        start = (line.status() or {})["mqtt"]["readings_delivered"]
        wait_until(
            lambda: (line.status() or {})["mqtt"]["readings_delivered"] >= start + hole,
            60,
            f"the broker takes {hole} readings for no one",
        )
        t_back = time.time()
        store.process.send_signal(signal.SIGCONT)

        def readings_gap() -> dict[str, Any]:
            gaps = store.get("/gaps").json()
            return next(g for g in gaps if g["kind"] == "readings")

        seen = wait_until(lambda: readings_gap()["missing"], 60, "the hole seen")
        t_seen = time.time()
        widest = max(seen, key=lambda m: m["last"] - m["first"])
        first, last = widest["first"], widest["last"]
        asked = wait_until(
            lambda: next((t for t, a in acks.since(t_back) if a["resend"]), None), 60, "asked"
        )
        wait_until(
            lambda: (g := readings_gap())["missing_seqs"] == 0 and g["high_seq"] > last,
            120,
            "the hole filled",
        )
        t_filled = time.time()
        status = line.status() or {}
        acks.close()
    return {
        "hole_readings": last - first + 1,
        "store_back_to_seen_s": t_seen - t_back,
        "store_back_to_asked_s": asked - t_back,
        "asked_to_filled_s": t_filled - asked,
        "store_back_to_filled_s": t_filled - t_back,
        "collector_resent": status["mqtt"].get("store_resent"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--measure", type=float, default=20.0)
    parser.add_argument("--hole", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"broker": [], "store": [], "heal": []}
    with tempfile.TemporaryDirectory(prefix="bench-handover-") as folder:
        root = Path(folder)
        for i in range(args.repeat):
            for delivery in ("broker", "store") if i % 2 == 0 else ("store", "broker"):
                result = steady(root / f"{delivery}-{i}", delivery, args.warmup, args.measure)
                runs[delivery].append(result)
                print(f"bench.handover: {json.dumps(_rounded(result))}", flush=True)
        for i in range(args.repeat):
            result = heal(root / f"heal-{i}", args.hole)
            runs["heal"].append(result)
            print(f"bench.handover: heal {json.dumps(_rounded(result))}", flush=True)
    for line in table(runs):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2))


def _rounded(result: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else float("nan")


def table(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    broker = _median(runs["broker"], "cpu_pct_of_one_core")
    store = _median(runs["store"], "cpu_pct_of_one_core")
    out = [
        f"collector CPU, % of one core (median of {len(runs['broker'])}): "
        f"delivery broker {broker:.1f}, delivery store {store:.1f} "
        f"({100 * (store / broker - 1):+.1f} %; target <= +10 %)",
        "  runs, broker: "
        + ", ".join(f"{r['cpu_pct_of_one_core']:.1f}" for r in runs["broker"])
        + "; store: "
        + ", ".join(f"{r['cpu_pct_of_one_core']:.1f}" for r in runs["store"]),
        f"store CPU: {_median(runs['store'], 'store_cpu_pct_of_one_core'):.1f} % of one core; "
        f"ack bytes per reading: {_median(runs['store'], 'ack_bytes_per_reading'):.4f} "
        "(target <= 0.1)",
    ]
    if runs["heal"]:
        out.append(
            f"heal a {_median(runs['heal'], 'hole_readings'):,.0f}-reading hole (median of "
            f"{len(runs['heal'])}): store back -> seen "
            f"{_median(runs['heal'], 'store_back_to_seen_s'):.2f} s, -> asked "
            f"{_median(runs['heal'], 'store_back_to_asked_s'):.2f} s, asked -> filled "
            f"{_median(runs['heal'], 'asked_to_filled_s'):.2f} s, store back -> filled "
            f"{_median(runs['heal'], 'store_back_to_filled_s'):.2f} s"
        )
    return out


if __name__ == "__main__":
    main()
