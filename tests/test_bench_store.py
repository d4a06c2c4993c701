"""The store's benchmark runs end to end on tiny sizes (figures are printed by bench/, never
asserted): every part ran and wrote its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require_mosquitto
from tests.postgres import require_postgres


@pytest.mark.slow
def test_store_benchmark_runs_on_tiny_sizes(tmp_path: Path) -> None:
    require_mosquitto()
    require_postgres()
    out = tmp_path / "store.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.store", "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for db in ("sqlite", "postgresql"):
        assert figures[f"ingest_{db}"]["readings"] == 19_500  # the first message warms up
        assert figures[f"ingest1_{db}"]["readings"] == 19_500
        assert figures[f"ingestk_{db}"]["readings"] == 19_500
        # The lines of schema 3: every reading in, none parked for its unit context (each
        # version is published before the first message naming it), none quarantined.
        for line in ("tester", "tester1", "rack", "rack1"):
            run = figures[f"{line}_{db}"]
            assert run["readings"] + run["warm_up_readings"] == 20_000, line
            assert (run["parked"], run["quarantined"]) == (0, 0), line
            assert run["context_messages"] > 0, line
        assert figures[f"genealogy_{db}"]["stored_readings"] == 200_000
        assert figures[f"genealogy_{db}"]["unit_readings"] == 2000
        assert figures[f"backlog_{db}"]["readings"] == 20_000


@pytest.mark.slow
def test_parking_benchmark_runs_on_tiny_sizes(tmp_path: Path) -> None:
    require_mosquitto()
    out = tmp_path / "parking.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.parking", "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["messages"] == 2000
    assert figures["parked_messages"] + figures["dropped_into_quarantine"] == 2000
    # Under the quarantine's bound: everything dropped from parking is still kept.
    assert figures["quarantine_rows"] == figures["dropped_into_quarantine"]
    assert figures["quarantine_pruned"] == 0
