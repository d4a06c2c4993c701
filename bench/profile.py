"""Where a poll's CPU goes: the reference scenario with py-spy attached to the collector.

    .venv/bin/python -m bench.profile                      # 3 runs, medians (about 2 min)
    .venv/bin/python -m bench.profile --repeat 1 --seconds 10 --keep /tmp/prof

Runs the reference load of bench/run.py (10 devices x 100 registers every 100 ms: real
pymodbus simulators, a private mosquitto, a consumer, ``collector run`` in a process of its
own), attaches py-spy (``pip install py-spy``) to the collector after the warm-up and samples
**every thread** (the event loop, paho's network thread, the buffer's writer thread) for the
measuring window, leaving out idle samples (a thread waiting in ``select`` or on a lock).
cProfile (``bench.run --profile``) sees only the main thread and inflates every Python call.

Each sample's stack is put in one part (PARTS, by the file of the deepest frame that belongs
to a part: a pymodbus call that ends in asyncio's ``transport.write`` is pymodbus's), and the
CPU of each thread over the window (utime + stime from /proc/PID/task, the process's total
being the figure bench.run reports) is shared out over that thread's samples: **µs of CPU
per poll** = CPU seconds x share / polls, the polls counted from the collector's /status. A
sampler sees where threads are, not what the kernel charges; system-call time shows under the
part that made the call. py-spy pauses the process for each sample (its non-blocking mode
reads torn stacks), which adds about a tenth to the collector's CPU: compare CPU totals with
bench.run, not with this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.run import TICKS, Workload, cpu_seconds, running

# (part, what the file path of a frame contains). The first part in this order that some
# frame of the stack belongs to, searching from the deepest frame up, takes the sample; a
# stack with none of them is the event loop's (asyncio, selectors: wake-ups, timers, tasks).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("pymodbus: transaction, framing, decode", ("pymodbus/",)),
    ("our decode (drivers/modbus)", ("drivers/modbus/",)),
    ("driver seam (drivers/base, retry)", ("drivers/base", "drivers/__init__")),
    ("context: tagging, units", ("collector/context/",)),
    ("encode (contract)", ("contract/",)),
    ("buffer: insert, commit, hint (writer thread + reader)", ("collector/buffer/",)),
    ("paho: publish, network thread", ("paho/",)),
    ("delivery: forwarder", ("collector/delivery/",)),
    ("poller (collector/acquisition)", ("collector/acquisition/",)),
    ("status / health HTTP", ("common/httpserver", "collector/operations/", "uvicorn", "h11")),
    ("collector, other", ("collector/service", "collector/config/", "common/", "drivers/")),
]
EVENT_LOOP = "event loop: wake-ups, timers, task steps (asyncio)"
OTHER = "other (interpreter, gc, logging, libraries)"
LOOP_FILES = ("asyncio/", "selectors.py")

# A thread sampled in one of these waits is idle: py-spy's own idle filter (it reads the
# thread's state) lets a few through, as many for a thread that never wakes (asyncio's
# default executor) as for the others, so they are sampling noise, not CPU.
WAITS = (
    "EpollSelector.select (selectors.py",
    "_worker (concurrent/futures/thread.py:81)",
    "Client._loop (paho/mqtt/client.py:1667)",
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
)
IDLE = "idle (waiting)"
SAMPLER = "py-spy's own cost (its stops, charged to every thread), estimated"

_THREAD = re.compile(r"^thread \((\d+)\)")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def part_of(stack: str) -> str:
    """The part a sample belongs to. ``stack`` is py-spy's raw format (root first, frames
    separated by ';', each ``function (file:line)``)."""
    frames = stack.split(";")
    if frames[-1].strip().startswith(WAITS):
        return IDLE
    files = []
    for frame in frames:
        match = _FRAME.match(frame.strip())
        files.append(match.group("file") if match else frame)
    for file in reversed(files):  # deepest first
        for part, needles in PARTS:
            if any(n in file for n in needles):
                return part
    if any(any(n in f for n in LOOP_FILES) for f in files):
        return EVENT_LOOP
    return OTHER


def parts_of(raw: Path) -> dict[int, Counter[str]]:
    """Samples per part, per thread (native id), from py-spy's raw output: one
    ``thread (TID): NAME;frame;...;frame COUNT`` per line."""
    counts: dict[int, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        match = _THREAD.match(stack)
        if match and count.isdigit():
            part = part_of(stack)
            counts.setdefault(int(match.group(1)), Counter())[part] += int(count)
    return counts


def thread_names(raw: Path) -> dict[int, str]:
    """Each sampled thread's Python name (MainThread, outbox_0: the buffer's writer, paho's
    network thread, asyncio_0: the default executor), numbered threads without the number."""
    names = {}
    for line in raw.read_text().splitlines():
        match = re.match(r"^thread \((\d+)\): ([^;]*)", line)
        if match:
            names[int(match.group(1))] = re.sub(r"_\d+$", "", match.group(2).strip())
    return names


def thread_cpu(pid: int, kernel_only: bool = False) -> dict[int, float]:
    """CPU seconds (utime + stime, or stime alone) of each thread of ``pid``, from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            user, system = int(fields[11]), int(fields[12])
            out[int(task.name)] = (system if kernel_only else user + system) / TICKS
    return out


def polls(status: dict[str, object] | None) -> int:
    devices = (status or {}).get("devices") or {}
    assert isinstance(devices, dict)
    return sum(int(d.get("polls", 0)) for d in devices.values())


def one_run(work: Path, seconds: float, rate: int) -> dict[str, Any]:
    load = Workload(10, 100, 100)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raw = work / "pyspy.txt"
    with running(work, load) as line:
        time.sleep(3.0)  # warm-up, as bench.run
        polls0, cpu0, t0 = polls(line.status()), cpu_seconds(line.pid), time.time()
        threads0, kernel0 = thread_cpu(line.pid), thread_cpu(line.pid, kernel_only=True)
        subprocess.run(
            [spy, "record", "--pid", str(line.pid), "--threads",
             "--rate", str(rate), "--duration", str(int(seconds)), "--format", "raw",
             "--output", str(raw)],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        threads1, kernel1 = thread_cpu(line.pid), thread_cpu(line.pid, kernel_only=True)
        polls1, cpu1, t1 = polls(line.status()), cpu_seconds(line.pid), time.time()
    n = polls1 - polls0
    cpu = cpu1 - cpu0
    # Each thread's CPU (from /proc, not from the samples: a thread waiting for the disk in
    # fsync is sampled as busy but costs no CPU) shared out over its own samples. py-spy stops
    # every thread for every sample, and the kernel charges that to the thread: a thread that
    # never runs (asyncio's default executor, idle in every sample) shows that cost alone, so
    # it is taken off every thread and shown on a line of its own.
    samples = parts_of(raw)
    names = thread_names(raw)
    spent = {t: threads1.get(t, 0.0) - threads0.get(t, 0.0) for t in samples}
    idle_threads = [spent[t] for t, counts in samples.items() if not set(counts) - {IDLE}]
    overhead = statistics.median(idle_threads) if idle_threads else 0.0
    parts: dict[str, float] = defaultdict(float)
    idle = 0
    per_thread: dict[int, float] = {}
    for tid, counts in samples.items():
        idle += counts.pop(IDLE, 0)
        busy = sum(counts.values())
        per_thread[tid] = 1e6 * spent[tid] / n
        own = max(0.0, spent[tid] - overhead) if busy else 0.0
        parts[SAMPLER] += spent[tid] - own
        for part, c in counts.items():
            parts[part] += own * c / busy
    parts = {p: 1e6 * v / n for p, v in parts.items()}
    # CPU of threads that gave no sample at all (the process's CPU minus the sampled threads')
    parts["unattributed (threads without samples)"] = max(
        0.0, 1e6 * cpu / n - sum(per_thread.values())
    )
    return {
        "polls": n,
        "cpu_s": cpu,
        "cpu_pct_of_one_core": 100 * cpu / (t1 - t0),
        "us_per_poll": 1e6 * cpu / n,
        "idle_samples_left_out": idle,
        "threads_us_per_poll": {names.get(t, str(t)): v for t, v in per_thread.items()},
        # The kernel's part of each thread's CPU (system calls, fsync, wake-ups, py-spy's stops)
        "threads_kernel_us_per_poll": {
            names.get(t, str(t)): 1e6 * (kernel1.get(t, 0.0) - kernel0.get(t, 0.0)) / n
            for t in per_thread
        },
        "parts_us_per_poll": dict(parts),
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.profile", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="sampling window per run")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--keep", type=Path, default=None, help="keep each run's folder here")
    parser.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="collector-profile-") as tmp:
        root = args.keep or Path(tmp)
        for i in range(args.repeat):
            load_before = os.getloadavg()[0]
            result = one_run(root / f"profile-{i}", args.seconds, args.rate)
            result["load_before"] = load_before
            runs.append(result)
            print(
                f"bench.profile: run {i + 1}/{args.repeat}: {result['polls']} polls, "
                f"{result['cpu_pct_of_one_core']:.1f} % of one core, "
                f"{result['us_per_poll']:.0f} µs/poll, load {load_before:.1f}",
                flush=True,
            )
    print_table(runs)
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2))
        print(f"bench.profile: wrote {args.json}")
    return 0


def print_table(runs: list[dict[str, Any]]) -> None:
    names = sorted({p for r in runs for p in r["parts_us_per_poll"]})

    def median(part: str) -> float:
        values = []
        for r in runs:
            parts = r["parts_us_per_poll"]
            assert isinstance(parts, dict)
            values.append(float(parts.get(part, 0.0)))
        return statistics.median(values)

    totals = [float(r["us_per_poll"]) for r in runs]
    cpus = [float(r["cpu_pct_of_one_core"]) for r in runs]
    loads = [float(r["load_before"]) for r in runs]
    print(f"\n| part | µs of CPU per poll (median of {len(runs)}) | share |")
    print("| --- | ---: | ---: |")
    total = statistics.median(totals)
    for part in sorted(names, key=median, reverse=True):
        value = median(part)
        if value > 0:
            print(f"| {part} | {value:,.0f} | {value / total:.0%} |")
    print(f"| **total** | **{total:,.0f}** | |")
    without = total - median(SAMPLER)
    print(f"| total without py-spy's cost | {without:,.0f} | |")
    threads = sorted({t for r in runs for t in r["threads_us_per_poll"]})
    print(
        "\nCPU by thread, µs per poll (median; py-spy's cost included): "
        + ", ".join(
            f"{t} {statistics.median(r['threads_us_per_poll'].get(t, 0.0) for r in runs):,.0f}"
            for t in threads
        )
    )
    print(
        "of which in the kernel: "
        + ", ".join(
            f"{t} "
            f"{statistics.median(r['threads_kernel_us_per_poll'].get(t, 0.0) for r in runs):,.0f}"
            for t in threads
        )
    )
    print(
        f"\nCPU {statistics.median(cpus):.1f} % of one core (runs: "
        + ", ".join(f"{c:.1f}" for c in cpus)
        + "); load average before each run: "
        + ", ".join(f"{x:.1f}" for x in loads)
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
