"""The collector's memory while its buffer fills: is RSS flat with 1,000,000 readings pending?

    .venv/bin/python -m bench.backlog_rss                    # 1,000,000 readings (about 2 min)
    .venv/bin/python -m bench.backlog_rss --readings 200000 --every 2

The reference load of bench/run.py (10 devices x 100 registers every 100 ms: 10,000
readings/s) with the broker away from the start, so every reading stays in the buffer. RSS of
the collector process (VmRSS from /proc) and the buffer's depth (its /status) are sampled
every ``--every`` seconds until ``--readings`` are buffered; printed as a table, with the
growth per 100,000 buffered readings from a straight line fitted through the samples taken
after the first 100,000 (start-up and the first SQLite page cache fill come before).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import Workload, memory_mb, running


def sample(readings: int, every: float, work: Path) -> list[dict[str, float]]:
    load = Workload(10, 100, 100)
    samples: list[dict[str, float]] = []
    with running(work, load, broker_up=False, max_readings=2 * readings) as line:
        t0 = time.time()
        deadline = t0 + readings / load.offered_per_s * 3 + 60
        depth = 0
        while depth < readings and time.time() < deadline:
            time.sleep(every)
            buffer = (line.status() or {}).get("buffer") or {}
            depth = int(buffer.get("depth") or 0)
            samples.append(
                {
                    "t_s": time.time() - t0,
                    "buffered": depth,
                    "rss_mb": memory_mb(line.pid),
                    "peak_rss_mb": memory_mb(line.pid, "VmHWM"),
                }
            )
    return samples


def slope_mb_per_100k(samples: list[dict[str, float]]) -> float | None:
    later = [s for s in samples if s["buffered"] >= 100_000]
    if len(later) < 3:
        return None
    xs = [s["buffered"] / 100_000 for s in later]
    ys = [s["rss_mb"] for s in later]
    return statistics.linear_regression(xs, ys).slope


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.backlog_rss", description=__doc__)
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, default=None, help="write the samples here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collector-backlog-") as tmp:
        samples = sample(args.readings, args.every, Path(tmp))
    print("| s | buffered readings | RSS MB | peak RSS MB |")
    print("| ---: | ---: | ---: | ---: |")
    for s in samples:
        print(
            f"| {s['t_s']:.0f} | {s['buffered']:,.0f} | {s['rss_mb']:.1f} "
            f"| {s['peak_rss_mb']:.1f} |"
        )
    slope = slope_mb_per_100k(samples)
    result: dict[str, Any] = {
        "load_average": os.getloadavg(),
        "buffered_at_end": samples[-1]["buffered"] if samples else 0,
        "rss_mb_first": samples[0]["rss_mb"] if samples else None,
        "rss_mb_last": samples[-1]["rss_mb"] if samples else None,
        "rss_mb_max": max((s["rss_mb"] for s in samples), default=None),
        "rss_growth_mb_per_100k_buffered": slope,
        "samples": samples,
    }
    print(
        f"bench.backlog_rss: {result['buffered_at_end']:,} buffered; RSS first / max / last "
        f"{result['rss_mb_first']:.1f} / {result['rss_mb_max']:.1f} / "
        f"{result['rss_mb_last']:.1f} MB; growth "
        + ("-" if slope is None else f"{slope:+.2f} MB per 100,000 buffered")
        + f"; load average {result['load_average'][0]:.1f}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
