"""The benchmark command runs end to end on a tiny scenario. Figures are not asserted here
(performance is measured by bench/, never by timed assertions in tests): only that every
scenario ran, printed its table and wrote its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, require_mosquitto


@pytest.mark.slow
def test_benchmark_command_runs_end_to_end_on_a_tiny_scenario(tmp_path: Path) -> None:
    require_mosquitto()
    out = tmp_path / "results.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pipeline efficiency:" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"ceilings", "reference", "timing", "throughput", "drain"}
    reference = data["runs"]["reference"][0]
    # The tiny reference load is carried completely, and every figure was measured.
    assert reference["missing_seqs"] == 0
    assert reference["delivered_per_s"] > 0
    assert reference["latency_ms_p50"] is not None
    assert data["runs"]["drain"][0]["buffered_readings"] >= 2000
    assert data["machine"]["cores"]


@pytest.mark.slow
def test_tagging_benchmark_runs() -> None:
    """bench/tagging.py on a tiny run: it prints its three figures (not asserted)."""
    import io
    from contextlib import redirect_stdout

    from bench import tagging

    out = io.StringIO()
    with redirect_stdout(out):
        assert tagging.main(["--polls", "3", "--repeat", "1"]) == 0
    assert set(json.loads(out.getvalue())) == {
        "plain_ns_per_reading",
        "rack_ns_per_reading",
        "rack_signals_ns_per_reading",
    }


@pytest.mark.slow
def test_handover_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """bench.handover: delivery broker and store side by side, and a hole healed."""
    require_mosquitto()
    out = tmp_path / "handover.json"
    command = [sys.executable, "-m", "bench.handover", "--repeat", "1", "--warmup", "1"]
    command += ["--measure", "2", "--hole", "500", "--json", str(out)]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "collector CPU, % of one core" in result.stdout
    runs = json.loads(out.read_text())
    assert [r["delivery"] for r in runs["broker"] + runs["store"]] == ["broker", "store"]
    assert runs["store"][0]["ack_bytes_per_reading"] > 0
    (heal,) = runs["heal"]
    assert heal["hole_readings"] >= 500
    assert heal["collector_resent"] >= heal["hole_readings"]


@pytest.mark.slow
def test_wire_benchmark_runs_every_shape_on_real_servers() -> None:
    """bench.wire (issue 24's byte targets) on a few seconds of each shape: every reading
    it got decoded (contexts and metadata resolved), figures printed, none asserted."""
    require_mosquitto()
    result = subprocess.run(
        [sys.executable, "-m", "bench.wire", "--seconds", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shapes = [line for line in result.stdout.splitlines() if line.startswith("{'shape'")]
    assert [line.split("'")[3] for line in shapes] == ["grid", "tester", "rack", "wide"]
    assert all("'wire_bytes_per_reading'" in line and "'readings': 0," not in line
               for line in shapes)  # fmt: skip
