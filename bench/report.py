"""Benchmark of the pilot-run report: 500 units x 5 operations x 10 characteristics in a SQLite
store, each unit record naming its operator, fixture nest, cavity and program (the results by
resource), golden samples measured 30 times with a gauge check (target: the whole report in
< 2 s on the 2-core reference machine).

    .venv/bin/python -m bench.report [--units 500] [--operations 5] [--characteristics 10]
        [--no-resources]

Prints the time of each stage (load from the store, evaluate, render) and of the whole
render_report() call for JSON and HTML, the median of --repeat runs. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.pilot_run import OPERATIONS, fill_pilot_run, golden_reference, specs
from store.report import Protocol, render_report
from store.report.as_json import render_json
from store.report.evaluate import evaluate
from store.report.load import load_run
from store.report.page import render_html

PROTOCOL: dict[str, Any] = {
    "run": {"name": "Benchmark run"},
    "operations": [
        {
            "name": "press-fit",
            "min_first_pass_yield": 0.9,
            "max_scrap_rate": 0.02,
            "cycle_time_p95_within_takt": True,
            "min_cpk_critical": 1.33,
        },
        {"name": "functional-test", "min_first_pass_yield": 0.95, "min_cpk_critical": 1.33},
    ],
}


def with_gauge(operations: int, characteristics: int) -> dict[str, Any]:
    """PROTOCOL with a gauge check of every characteristic on both golden samples at every
    operation."""
    chars = specs(characteristics)
    gauges = {
        op: {
            "references": {
                serial: {c.name: golden_reference(c, serial) for c in chars}
                for serial in ("GOLD-1", "GOLD-2")
            }
        }
        for op in OPERATIONS[:operations]
    }
    listed = {o["name"]: o for o in PROTOCOL["operations"]}
    return {
        **PROTOCOL,
        "operations": [{**listed.get(op, {"name": op}), "gauge": g} for op, g in gauges.items()],
    }


def timed(repeat: int, call: Callable[[], Any]) -> tuple[float, Any]:
    """Median seconds over ``repeat`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--operations", type=int, default=5)
    parser.add_argument("--characteristics", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-resources", action="store_true", help="records without resources, no gauge check"
    )
    args = parser.parse_args()
    resources = not args.no_resources
    protocol = Protocol.model_validate(
        with_gauge(args.operations, args.characteristics) if resources else PROTOCOL
    )
    with tempfile.TemporaryDirectory() as folder:
        engine = sa.create_engine(f"sqlite:///{Path(folder) / 'store.db'}")
        start = time.perf_counter()
        fill_pilot_run(
            engine,
            n_units=args.units,
            n_operations=args.operations,
            n_characteristics=args.characteristics,
            resources=resources,
            golden_times=30 if resources else 3,
        )
        with engine.connect() as conn:
            n_units = conn.execute(sa.text("select count(*) from units")).scalar_one()
            n_chars = conn.execute(sa.text("select count(*) from characteristics")).scalar_one()
        print(
            f"store: {args.units} units x {args.operations} operations x "
            f"{args.characteristics} characteristics = {n_units} unit records, "
            f"{n_chars} characteristic values (written in {time.perf_counter() - start:.1f} s)"
            + (", with resources and a gauge check" if resources else "")
        )
        now = datetime.now(UTC)
        load_s, data = timed(args.repeat, lambda: load_run(engine, protocol.run))
        evaluate(data, protocol)  # scipy's import (about 1.5 s, once a process) not counted
        evaluate_s, report = timed(args.repeat, lambda: evaluate(data, protocol))
        json_s, body_json = timed(args.repeat, lambda: render_json(report, now))
        html_s, body_html = timed(args.repeat, lambda: render_html(report, now))
        total_json, _ = timed(args.repeat, lambda: render_report(engine, protocol, "json"))
        total_html, _ = timed(args.repeat, lambda: render_report(engine, protocol, "html"))
        engine.dispose()
    print(
        f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print(f"median of {args.repeat} runs, seconds:")
    print(f"  load from the store      {load_s:7.3f}")
    print(f"  evaluate (quality/)      {evaluate_s:7.3f}")
    print(f"  render JSON              {json_s:7.3f}   ({len(body_json) / 1e6:.1f} MB)")
    print(f"  render HTML              {html_s:7.3f}   ({len(body_html) / 1e6:.1f} MB)")
    print(f"  render_report(json)      {total_json:7.3f}   target < 2 s")
    print(f"  render_report(html)      {total_html:7.3f}   target < 2 s")


if __name__ == "__main__":
    main()
