"""Benchmarks: one command, every scenario, a table and a JSON file.

    .venv/bin/python -m bench.run                 # the full set (about 15 minutes on 2 cores)
    .venv/bin/python -m bench.run --quick         # tiny sizes, one run each (a smoke test)
    .venv/bin/python -m bench.run --only reference,timing --repeat 5

Every scenario runs the real thing in separate processes on this machine: pymodbus servers
(bench/sim.py), a private mosquitto on a free loopback port, the collector (`collector run`)
and a consumer (bench/subscriber.py) that logs each reading's arrival. Figures are computed
from the consumer's log and from /proc (CPU, RSS) and /status (poll timing) of the collector
process, never from inside it. Each scenario runs ``--repeat`` times (default 3); the table
shows the median. docs/performance.md has the results and how to read them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import ceilings
from tests.helpers import Mosquitto, free_port, mosquitto_binary, wait_until
from tests.store_fixtures import StoreProcess

TICKS = os.sysconf("SC_CLK_TCK")
# --profile: run the collector under cProfile (stats in each run's folder, kept with --workdir).
PROFILE = False
# --commit-interval-ms: the collector's buffer.commit_interval_ms (None: its default).
COMMIT_INTERVAL_MS: int | None = None


# --------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def memory_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- one line


@dataclass
class Workload:
    devices: int
    registers: int
    period_ms: int

    @property
    def offered_per_s(self) -> float:
        return self.devices * self.registers * 1000 / self.period_ms

    def label(self) -> str:
        return f"{self.devices} dev x {self.registers} reg @ {self.period_ms} ms"


@dataclass
class Line:
    """Simulators, a broker, a consumer and a collector, in processes of their own."""

    work: Path
    load: Workload
    broker_up: bool = True
    max_readings: int = 2_000_000
    #: mqtt.delivery; with "store" a central store (SQLite, its defaults) acknowledges.
    delivery: str = "broker"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.broker = Mosquitto(self.work / "mosquitto")
        self.arrivals = self.work / "arrivals.txt"
        self.health_port = free_port()
        self.collector: subprocess.Popen[bytes] | None = None
        self.store: StoreProcess | None = None

    def _spawn(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", *args], **kwargs)
        self.processes.append(process)
        return process

    def start(self) -> None:
        self.broker.start()
        ready = self.work / "subscribed"
        self._spawn(
            "bench.subscriber",
            "--port", str(self.broker.port),
            "--topic", "collector/+/+/+/readings",
            "--out", str(self.arrivals),
            "--ready", str(ready),
        )  # fmt: skip
        wait_until(ready.exists, 20, "the consumer to subscribe")
        if self.delivery == "store":
            db_url = f"sqlite:///{self.work / 'store.db'}"
            self.store = StoreProcess(self.work / "store", self.broker, db_url, client_id="store")
            self.store.start()
        if not self.broker_up:
            self.broker.stop()  # the consumer's session and subscription persist
        servers = (self.load.devices + 24) // 25
        sim = self._spawn(
            "bench.sim", "--servers", str(servers), "--units", "25", stdout=subprocess.PIPE
        )
        assert sim.stdout is not None
        ports = json.loads(sim.stdout.readline())
        config = self.work / "collector.yaml"
        config.write_text(yaml.safe_dump(self._config(ports)))
        command = ["collector", "run", "--config", str(config)]
        if PROFILE:
            # cProfile writes its stats when the collector exits (SIGTERM is a clean exit).
            command = ["cProfile", "-o", str(self.work / "collector.prof"), "-m", *command]
        log = (self.work / "collector.log").open("w")
        self.collector = self._spawn(*command, stderr=log)
        wait_until(lambda: self.status() is not None, 30, "the collector's /status")

    def _config(self, ports: list[int]) -> dict[str, Any]:
        load = self.load
        tags = [
            {"name": f"r{i}", "table": "holding_register", "address": i, "type": "uint16"}
            for i in range(load.registers)
        ]
        return {
            "collector": {"id": "bench", "site": "lab", "line": "bench"},
            "buffer": {
                "path": str(self.work / "buffer.db"),
                "max_readings": self.max_readings,
                **(
                    {} if COMMIT_INTERVAL_MS is None else {"commit_interval_ms": COMMIT_INTERVAL_MS}
                ),
            },
            # What is measured is line -> collector -> broker: without a central store rows
            # leave the buffer on the broker's PUBACK (mqtt.delivery: broker); bench/handover.py
            # runs the same line with delivery: store and a store.
            "mqtt": {
                "host": "127.0.0.1",
                "port": self.broker.port,
                "shutdown_grace_s": 2,
                "delivery": self.delivery,
            },
            "health": {"port": self.health_port},
            "devices": [
                {
                    "name": f"dev-{i:03d}",
                    "protocol": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": ports[i // 25],
                    "unit_id": i % 25 + 1,
                    "poll_interval_ms": load.period_ms,
                    "timeout_ms": 1000,
                    "tags": tags,
                }
                for i in range(load.devices)
            ],
        }

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/status", timeout=2
            ) as answer:
                result: dict[str, Any] = json.loads(answer.read())
                return result
        except OSError:
            return None

    @property
    def pid(self) -> int:
        assert self.collector is not None
        return self.collector.pid

    def stop(self) -> None:
        if self.collector is not None and self.collector.poll() is None:
            self.collector.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.collector.wait(30)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.store is not None:
            self.store.stop()
        self.broker.stop()


@contextlib.contextmanager
def running(work: Path, load: Workload, **kwargs: Any) -> Iterator[Line]:
    line = Line(work, load, **kwargs)
    try:
        line.start()
        yield line
    finally:
        line.stop()


def arrivals(path: Path) -> list[tuple[int, float, float]]:
    return Arrivals(path).read_new()


class Arrivals:
    """Reads the consumer's log incrementally (it can grow to millions of lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""

    def read_new(self) -> list[tuple[int, float, float]]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            f.seek(self._offset)
            text = self._partial + f.read()
            self._offset = f.tell()
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next call
        rows = []
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                rows.append((int(parts[0]), float(parts[1]), float(parts[2])))
        return rows


# --------------------------------------------------------------------------- scenarios


@dataclass
class Settings:
    quick: bool
    warmup_s: float
    measure_s: float
    drain_readings: int
    ramp: list[Workload]


def measure_steady(work: Path, load: Workload, s: Settings) -> dict[str, Any]:
    """Throughput, CPU, RSS, latency and completeness of one steady workload."""
    with running(work, load) as line:
        time.sleep(s.warmup_s)
        t0, cpu0 = time.time(), cpu_seconds(line.pid)
        time.sleep(s.measure_s)
        t1, cpu1 = time.time(), cpu_seconds(line.pid)
        status = line.status() or {}
        peak_rss = memory_mb(line.pid, "VmHWM")
        rss = memory_mb(line.pid)
    rows = arrivals(line.arrivals)
    buffer = status.get("buffer") or {}
    window = [r for r in rows if t0 <= r[2] < t1]  # read in the window
    latencies = [(arrival - read) * 1000 for _, arrival, read in window]
    seqs = {r[0] for r in rows}
    missing = (max(seqs) - min(seqs) + 1 - len(seqs)) if seqs else 0
    lateness = [
        d["poll_start_late_ms"]
        for d in status.get("devices", {}).values()
        if d.get("poll_start_late_ms")
    ]
    return {
        "offered_per_s": load.offered_per_s,
        "delivered_per_s": len({r[0] for r in window}) / (t1 - t0),
        "cpu_pct_of_one_core": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mb": rss,
        "peak_rss_mb": peak_rss,
        "latency_ms_p50": percentile(latencies, 0.50),
        "latency_ms_p95": percentile(latencies, 0.95),
        "latency_ms_p99": percentile(latencies, 0.99),
        # Not at the consumer when the run stopped: still buffered (an overloaded collector
        # delivers late), or dropped; the collector's own counts tell which.
        "missing_seqs": missing,
        "buffered_at_end": buffer.get("depth"),
        "dropped_by_collector": sum(
            buffer.get(k) or 0 for k in ("dropped_total", "overflow_dropped", "quarantined_total")
        ),
        "mqtt_connects": (status.get("mqtt") or {}).get("connects"),
        "skipped_polls": sum(d.get("skipped_polls", 0) for d in status.get("devices", {}).values()),
        "poll_late_ms_p50": statistics.median(x["p50"] for x in lateness) if lateness else None,
        "poll_late_ms_p99": max(x["p99"] for x in lateness) if lateness else None,
    }


def scenario_throughput(work: Path, s: Settings) -> dict[str, Any]:
    steps = {}
    for i, load in enumerate(s.ramp):
        result = measure_steady(work / f"step{i}", load, s)
        steps[load.label()] = result
        if result["delivered_per_s"] < 0.9 * load.offered_per_s:
            break  # saturated: a larger offer will not be carried either
    best = max(steps.values(), key=lambda r: r["delivered_per_s"])
    return {
        "steps": steps,
        "saturation_delivered_per_s": best["delivered_per_s"],
        "cpu_pct_at_saturation": best["cpu_pct_of_one_core"],
        "peak_rss_mb": best["peak_rss_mb"],
        # Beyond saturation, too: more devices, and the writer's queue full (back-pressure).
        "peak_rss_mb_whole_ramp": max(r["peak_rss_mb"] for r in steps.values()),
    }


def scenario_reference(work: Path, s: Settings) -> dict[str, Any]:
    load = Workload(2, 20, 100) if s.quick else Workload(10, 100, 100)
    result = measure_steady(work, load, s)
    result["delivered_fraction"] = result["delivered_per_s"] / load.offered_per_s
    return result


def scenario_timing(work: Path, s: Settings) -> dict[str, Any]:
    load = Workload(5, 10, 100) if s.quick else Workload(50, 10, 100)
    return measure_steady(work, load, s)


def scenario_drain(work: Path, s: Settings) -> dict[str, Any]:
    """Fill the buffer with the broker down, then bring it back while polling goes on (the
    reference workload: 10 devices x 100 registers every 100 ms)."""
    load = Workload(2, 50, 50) if s.quick else Workload(10, 100, 100)
    target = s.drain_readings
    with running(work, load, broker_up=False, max_readings=max(2 * target, 10_000)) as line:
        time.sleep(1.0)
        rss_empty = memory_mb(line.pid)
        depth = 0
        deadline = time.time() + target / load.offered_per_s * 3 + 60
        while depth < target and time.time() < deadline:
            time.sleep(0.5)
            depth = ((line.status() or {}).get("buffer") or {}).get("depth", 0)
        status = line.status() or {}
        mark = status["buffer"]["last_seq"]
        depth = status["buffer"]["depth"]
        files = [work / "buffer.db", work / "buffer.db-wal"]
        disk = sum(f.stat().st_size for f in files if f.exists())
        rss_full = memory_mb(line.pid)
        t_start = time.time()
        line.broker.start()
        log = Arrivals(line.arrivals)
        backlog: set[int] = set()
        # (read, arrival) of readings newer than the mark: polled after the buffer was full
        rows_live: list[tuple[float, float]] = []
        first_arrival: float | None = None
        limit = time.time() + max(120.0, target / 2_000)
        t_done = None
        while time.time() < limit:
            time.sleep(0.5)
            for seq, arrival, read in log.read_new():
                first_arrival = arrival if first_arrival is None else min(first_arrival, arrival)
                if seq <= mark:
                    backlog.add(seq)
                else:
                    rows_live.append((read, arrival))
            if len(backlog) >= mark:
                t_done = time.time()
                break
        rss_after = memory_mb(line.pid)
    drained = len(backlog)
    # The collector reconnects at its next retry (its backoff grew during the outage): the
    # drain starts with the first arrival; live latency counts readings read from then on
    # (those read before it waited for the broker, not for the backlog).
    t_connected = first_arrival or t_start
    elapsed = (t_done or time.time()) - t_connected
    live = [(a - r) * 1000 for r, a in rows_live if r >= t_connected]
    return {
        "buffered_readings": depth,
        "drained_readings": drained,
        "drain_complete": t_done is not None,
        "reconnect_wait_s": t_connected - t_start,
        "drain_per_s": drained / elapsed,
        "drain_s": elapsed,
        "live_latency_ms_p50_during_drain": percentile(live, 0.50),
        "live_latency_ms_p99_during_drain": percentile(live, 0.99),
        "bytes_on_disk_per_reading": disk / depth if depth else None,
        "rss_mb_empty_buffer": rss_empty,
        "rss_mb_full_buffer": rss_full,
        "rss_mb_after_drain": rss_after,
    }


def scenario_ceilings(work: Path, s: Settings) -> dict[str, Any]:
    seconds = 1.0 if s.quick else 3.0
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    try:
        paho = ceilings.paho_qos1(broker.port, seconds)
    finally:
        broker.stop()
    return {
        "sqlite_core_inserts_per_s": ceilings.sqlite_inserts(work / "ceiling.db", seconds),
        "sqlite_batched_readings_per_s": ceilings.sqlite_inserts(
            work / "ceiling.db", seconds, per_row=100
        ),
        "paho_qos1_readings_per_s": paho,
        "pymodbus_registers_per_s": ceilings.modbus_reads(seconds),
    }


SCENARIOS: dict[str, Callable[[Path, Settings], dict[str, Any]]] = {
    "ceilings": scenario_ceilings,
    "reference": scenario_reference,
    "timing": scenario_timing,
    "throughput": scenario_throughput,
    "drain": scenario_drain,
}

# (scenario, figure, target, higher is better)
TARGETS: list[tuple[str, str, float | None, bool]] = [
    ("reference", "delivered_fraction", 0.999, True),
    ("reference", "latency_ms_p95", 50, False),
    ("reference", "cpu_pct_of_one_core", 10, False),
    ("reference", "peak_rss_mb", 100, False),
    ("reference", "missing_seqs", 0, False),
    ("timing", "poll_late_ms_p50", None, False),
    ("timing", "poll_late_ms_p99", 5, False),
    ("throughput", "saturation_delivered_per_s", 100_000, True),
    ("throughput", "cpu_pct_at_saturation", None, False),
    ("throughput", "peak_rss_mb", 100, False),
    ("throughput", "peak_rss_mb_whole_ramp", None, False),
    ("drain", "drain_per_s", 50_000, True),
    ("drain", "live_latency_ms_p99_during_drain", 1000, False),
    ("drain", "bytes_on_disk_per_reading", None, False),
    ("drain", "rss_mb_empty_buffer", 100, False),
    ("drain", "rss_mb_full_buffer", 100, False),
    ("ceilings", "sqlite_core_inserts_per_s", None, True),
    ("ceilings", "sqlite_batched_readings_per_s", None, True),
    ("ceilings", "paho_qos1_readings_per_s", None, True),
    ("ceilings", "pymodbus_registers_per_s", None, True),
]


# The stages as the pipeline uses them (SQLite: a row per poll, not per reading).
CEILINGS = (
    "sqlite_batched_readings_per_s",
    "paho_qos1_readings_per_s",
    "pymodbus_registers_per_s",
)


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = [f"{'scenario':<11} {'figure':<34} {'median':>12} {'target':>10}  met"]
    for scenario, key, target, higher in TARGETS:
        if scenario not in results:
            continue
        value = median_of(results[scenario], key)
        shown = "-" if value is None else f"{value:,.1f}"
        if target is None or value is None:
            verdict, goal = "", "-"
        else:
            ok = value >= target if higher else value <= target
            verdict, goal = ("yes" if ok else "NO"), f"{'>=' if higher else '<='}{target:g}"
        out.append(f"{scenario:<11} {key:<34} {shown:>12} {goal:>10}  {verdict}")
    if "ceilings" in results and "throughput" in results:
        stages = {k: v for k in CEILINGS if (v := median_of(results["ceilings"], k)) is not None}
        e2e = median_of(results["throughput"], "saturation_delivered_per_s")
        if stages and e2e:
            slowest = min(stages, key=stages.__getitem__)
            out.append(
                f"pipeline efficiency: end to end {e2e:,.0f} readings/s = "
                f"{e2e / stages[slowest]:.0%} of the slowest stage alone ({slowest})"
            )
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--repeat", type=int, default=None, help="runs per scenario (3)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--json", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument(
        "--profile", action="store_true", help="run the collector under cProfile (slower)"
    )
    parser.add_argument(
        "--commit-interval-ms",
        type=int,
        default=None,
        help="the collector's buffer.commit_interval_ms (default: its own default)",
    )
    args = parser.parse_args(argv)
    global PROFILE, COMMIT_INTERVAL_MS  # noqa: PLW0603 - switches for the whole command
    PROFILE = args.profile
    COMMIT_INTERVAL_MS = args.commit_interval_ms
    if mosquitto_binary() is None:
        print("bench: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    repeat = args.repeat or (1 if args.quick else 3)
    settings = Settings(
        quick=args.quick,
        warmup_s=1.0 if args.quick else 3.0,
        measure_s=2.0 if args.quick else 10.0,
        drain_readings=2_000 if args.quick else 1_000_000,
        ramp=[Workload(2, 20, 100)]
        if args.quick
        else [
            Workload(10, 100, 100),
            Workload(20, 125, 50),
            Workload(40, 125, 50),
            Workload(60, 125, 50),
            Workload(80, 125, 50),
            Workload(120, 125, 50),
            Workload(160, 125, 50),
        ],
    )
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        print(f"bench: unknown scenario(s) {sorted(unknown)}; known: {list(SCENARIOS)}")
        return 2
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
        root = args.workdir or Path(tmp)
        for name in chosen:
            for run in range(repeat):
                started = time.time()
                try:
                    result = SCENARIOS[name](root / f"{name}-{run}", settings)
                except Exception as exc:
                    result = {"error": repr(exc)}
                results.setdefault(name, []).append(result)
                shown = {
                    k: round(v, 1) if isinstance(v, float) else v
                    for k, v in result.items()
                    if k != "steps"
                }
                print(
                    f"bench: {name} run {run + 1}/{repeat} ({time.time() - started:.0f} s): "
                    f"{shown}",
                    flush=True,
                )
                write(args.json, results, args.quick, repeat, [])
    lines = table(results)
    print("\n".join(lines))
    write(args.json, results, args.quick, repeat, lines)
    print(f"bench: wrote {args.json}")
    failed = [name for name, runs in results.items() if any("error" in r for r in runs)]
    if failed:
        print(f"bench: runs failed in {failed} (see 'error' in the JSON)", file=sys.stderr)
        return 1
    return 0


def write(
    path: Path,
    results: dict[str, list[dict[str, Any]]],
    quick: bool,
    repeat: int,
    lines: list[str],
) -> None:
    """Written after every run, so an interrupted benchmark keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": machine(),
        "quick": quick,
        "repeat": repeat,
        "runs": results,
        "table": lines,
    }
    path.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
