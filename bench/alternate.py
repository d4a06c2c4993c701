"""Two (or more) versions of the collector measured alternately on the same machine.

    .venv/bin/python -m bench.alternate /tmp/main-checkout . --rounds 3
    .venv/bin/python -m bench.alternate /tmp/main-checkout . --scenario timing --rounds 5

Each round runs ``bench.run --only SCENARIO --repeat 1`` once in every checkout, one after the
other (a checkout is any folder holding the repository, e.g. ``git worktree add`` or ``git
archive main | tar -x -C DIR``; the benchmark and the collector it starts run from that
folder's code, with this Python). On a machine shared with other work the load changes from
minute to minute: alternating puts every version through the same minutes, and the medians
over the rounds are compared, never one run against another. Prints every run and the
medians; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

FIGURES = (
    "cpu_pct_of_one_core",
    "latency_ms_p50",
    "latency_ms_p95",
    "peak_rss_mb",
    "missing_seqs",
    "poll_late_ms_p99",
)


def one_run(checkout: Path, scenario: str, work: Path) -> dict[str, Any]:
    out = work / "result.json"
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", scenario, "--repeat", "1",
         "--json", str(out), "--workdir", str(work)],
        cwd=checkout, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result: dict[str, Any] = json.loads(out.read_text())["runs"][scenario][0]
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return {"error": repr(exc)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.alternate", description=__doc__)
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenario", default="reference")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {str(c): [] for c in args.checkouts}
    with tempfile.TemporaryDirectory(prefix="collector-alternate-") as tmp:
        for r in range(args.rounds):
            for i, checkout in enumerate(args.checkouts):
                load = os.getloadavg()[0]
                result = one_run(checkout.resolve(), args.scenario, Path(tmp) / f"{r}-{i}")
                result["load_before"] = load
                runs[str(checkout)].append(result)
                shown = ", ".join(
                    f"{k} {result[k]:.1f}"
                    for k in FIGURES
                    if isinstance(result.get(k), int | float)
                )
                print(f"round {r + 1} {checkout}: load {load:.1f}: {shown or result}", flush=True)
    print(f"\n| version | {' | '.join(FIGURES)} | load before runs |")
    print("| --- |" + " ---: |" * (len(FIGURES) + 1))
    for checkout, results in runs.items():
        cells = []
        for key in FIGURES:
            values = [x[key] for x in results if isinstance(x.get(key), int | float)]
            cells.append(
                f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"
                if values
                else "-"
            )
        loads = ", ".join(f"{x['load_before']:.1f}" for x in results)
        print(f"| {checkout} | {' | '.join(cells)} | {loads} |")
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
