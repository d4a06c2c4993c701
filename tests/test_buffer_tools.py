"""`collector buffer stats | export` and `collector schema`, on real buffer files and as the
real command (read-only: they never change the file)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.buffer import Outbox
from collector.cli import parse_since
from collector.reading import ContextChanges, Reading, Record, UnitRecord


def collector(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def buffer(tmp_path: Path) -> Path:
    """1,005 readings 10 s apart (ts 1,700,000,000 + 10 i) into a 1,000 cap: 5 dropped, 3
    delivered, one quarantined; and one unit record."""
    path = tmp_path / "b.db"
    box = Outbox(path, 1000)
    records = [
        Record(Reading(1_700_000_000.0 + 10 * i, "v", float(i), "V"), "st", "dev", "SN1", "op", 1)
        for i in range(1005)
    ]
    unit = UnitRecord("SN1", "st", "op", 1, 1.7e9, 1.7e9 + 5, "verdict", "pass", None, 3, {})
    box.append(records, ContextChanges([unit], {}, {}))
    box.ack(6, 8)
    box.quarantine(9, "too large")
    box.close()
    return path


def test_stats_show_counts_ranges_and_drops(buffer: Path) -> None:
    before = hashlib.sha256(buffer.read_bytes()).hexdigest()
    result = collector("buffer", "stats", "--path", str(buffer))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["readings"]["unsent"] == 1000 - 3 - 1
    assert stats["readings"]["first_seq"] == 10
    assert stats["readings"]["last_seq"] == 1005
    assert stats["readings"]["oldest_ts"] == "2023-11-14T22:14:50Z"
    assert stats["dropped_total"] == 5
    assert stats["quarantine"] == 1
    assert stats["units"]["unsent"] == 1
    assert hashlib.sha256(buffer.read_bytes()).hexdigest() == before


def test_export_since_a_time_as_json_lines(buffer: Path) -> None:
    since = "2023-11-14T22:13:20Z"  # ts 1,700,000,000: the first reading ever
    result = collector("buffer", "export", "--path", str(buffer), "--since", since)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in lines] == list(range(10, 1006))
    assert lines[0]["ts"] == "2023-11-14T22:14:50Z"
    assert lines[0]["unit_serial"] == "SN1"
    later = collector(
        "buffer", "export", "--path", str(buffer), "--since", "2023-11-15T01:00:00+00:00"
    )
    first = json.loads(later.stdout.splitlines()[0])
    assert first["ts"] >= "2023-11-15T01:00:00Z"
    quarantine = collector("buffer", "export", "--path", str(buffer), "--table", "quarantine")
    (moved,) = [json.loads(line) for line in quarantine.stdout.splitlines()]
    assert (moved["seq"], moved["quarantine_reason"]) == (9, "too large")
    units = collector("buffer", "export", "--path", str(buffer), "--table", "units")
    assert json.loads(units.stdout)["serial"] == "SN1"


def test_export_errors_are_clear(tmp_path: Path, buffer: Path) -> None:
    missing = collector("buffer", "stats", "--path", str(tmp_path / "nope.db"))
    assert missing.returncode == 1
    assert "no such file" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # nothing created
    bad = collector("buffer", "export", "--path", str(buffer), "--since", "yesterday")
    assert bad.returncode == 2
    assert "expected e.g. 2026-11-20T06:00:00Z or 36h" in bad.stderr


def test_since_accepts_ages_and_times() -> None:
    assert parse_since("36h", now=1_000_000.0) == 1_000_000.0 - 36 * 3600
    assert parse_since("3d", now=1_000_000.0) == 1_000_000.0 - 3 * 86400
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0  # no offset: UTC


def test_schema_is_the_configs_json_schema() -> None:
    result = collector("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert set(schema["required"]) >= {"collector", "buffer", "devices"}
    assert "opcua" in json.dumps(schema["$defs"]["OpcUaDevice"])
    assert schema["$defs"]["StationConfig"]["properties"]["unit_timeout_s"]["default"] == 3600
