"""`collector buffer stats | export` and `collector schema`, on real buffer files and as the
real command (read-only: they never change the file)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.buffer import Outbox, make_batch
from collector.buffer.writer import context_rows
from collector.cli import parse_since
from contract.encode import PollEncoder
from contract.records import Context, ContextChanges, Reading, UnitRecord


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
    """1,005 readings 10 s apart (ts 1,700,000,000 + 10 i), 5 a poll, into a 1,000 cap: the
    oldest poll (seq 1-5) dropped, the next one (6-10) delivered, seq 11 quarantined; and one
    unit record."""
    path = tmp_path / "b.db"
    box = Outbox(path, 1000)
    encoder = PollEncoder()
    context = Context("st", "SN1", "op", 1)
    batches = [
        make_batch(
            encoder,
            first + 1,
            "dev",
            [
                Reading(1_700_000_000.0 + 10 * i, "v", float(i), "V")
                for i in range(first, first + 5)
            ],
            [context] * 5,
        )
        for first in range(0, 1005, 5)
    ]
    unit = UnitRecord("SN1", "st", "op", 1, 1.7e9, 1.7e9 + 5, "verdict", "pass", None, 3, {})
    contexts = context_rows(encoder, {}, 1005)  # the unit context the polls name, as kept
    box.append(batches, ContextChanges([unit], {}, {}), contexts=contexts)
    box.ack(6, 10)
    box.split(11, 15, 1)
    box.quarantine(11, "too large")
    box.close()
    return path


def test_stats_show_counts_ranges_and_drops(buffer: Path) -> None:
    before = hashlib.sha256(buffer.read_bytes()).hexdigest()
    result = collector("buffer", "stats", "--path", str(buffer))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["readings"]["unsent"] == 1000 - 5 - 1
    assert stats["readings"]["first_seq"] == 12
    assert stats["readings"]["last_seq"] == 1005
    assert stats["readings"]["last_seq_ever"] == 1005
    assert stats["readings"]["oldest_ts"] == "2023-11-14T22:15:10Z"
    assert stats["dropped_total"] == 5
    assert stats["quarantine"] == 1
    assert stats["units"]["unsent"] == 1
    assert hashlib.sha256(buffer.read_bytes()).hexdigest() == before


def test_export_since_a_time_as_json_lines(buffer: Path) -> None:
    since = "2023-11-14T22:13:20Z"  # ts 1,700,000,000: the first reading ever
    result = collector("buffer", "export", "--path", str(buffer), "--since", since)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["seq"] for r in lines] == list(range(12, 1006))
    assert lines[0]["ts"] == "2023-11-14T22:15:10Z"
    assert (lines[0]["unit_serial"], lines[0]["attempt"]) == ("SN1", 1)
    # 01:00:00 is 10,000 s after the first reading: seq 1001 on, from the middle of a poll.
    later = collector(
        "buffer", "export", "--path", str(buffer), "--since", "2023-11-15T01:00:00+00:00"
    )
    assert [json.loads(line)["seq"] for line in later.stdout.splitlines()] == [
        1001,
        1002,
        1003,
        1004,
        1005,
    ]
    quarantine = collector("buffer", "export", "--path", str(buffer), "--table", "quarantine")
    (moved,) = [json.loads(line) for line in quarantine.stdout.splitlines()]
    assert (moved["seq"], moved["tag"], moved["quarantine_reason"]) == (11, "v", "too large")
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


def test_help_names_every_command() -> None:
    result = collector("--help")
    assert result.returncode == 0
    described = result.stdout.split("Commands:")[1].split(".")[0]
    assert described.replace("|", " ").split() == [
        "run", "check", "probe", "scan", "browse", "opcua-cert", "buffer", "schema", "store",
        "demo",
    ]  # fmt: skip


def test_a_closed_pipe_ends_quietly(buffer: Path) -> None:
    command = f"{sys.executable} -m collector buffer export --path {buffer} | head -1"
    result = subprocess.run(
        ["bash", "-c", f'{command}; echo "exit=${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(result.stdout)  # one whole line, then a quiet end
    assert result.stderr == "exit=0\n"
