"""systemd: the unit file passes `systemd-analyze verify`, and the service speaks the notify
protocol (READY=1, WATCHDOG=1 from its loop, STOPPING=1) over a real datagram socket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.helpers import free_port, require_systemd_analyze

UNIT = REPO / "systemd" / "collector.service"


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_systemd_analyze()
    # verify checks that ExecStart's program exists: point it at this checkout's collector.
    collector = Path(sys.executable).with_name("collector")
    unit = tmp_path / "collector.service"
    unit.write_text(UNIT.read_text().replace("/opt/collector/venv/bin/collector", str(collector)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/opt/collector/venv/bin/collector check",
        "Restart=on-failure",
        "User=collector",
        "SupplementaryGroups=dialout",
        "StateDirectory=collector",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=65536",  # not systemd's default 1024 (tests/test_health_server.py)
    ):
        assert line in text, line


def test_service_notifies_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    address = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(0.2)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "collector": {"id": "pc1", "site": "s", "line": "l"},
                "buffer": {"path": str(tmp_path / "b.db")},
                # Nothing listens on these ports: the service runs all the same.
                "mqtt": {"port": free_port(), "shutdown_grace_s": 0},
                "health": {"port": 0},
                "devices": [
                    {
                        "name": "d",
                        "protocol": "modbus_tcp",
                        "host": "127.0.0.1",
                        "port": free_port(),
                        "tags": [{"name": "t", "table": "coil", "address": 0, "type": "bool"}],
                    }
                ],
            }
        )
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
    )
    messages: list[str] = []

    def receive_until(done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
            if done():
                return

    try:
        receive_until(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 3, 30)
        process.send_signal(signal.SIGTERM)
        receive_until(lambda: any(m.startswith("STOPPING=1") for m in messages), 30)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        sock.close()
    ready = [m for m in messages if m.startswith("READY=1")]
    assert ready == ["READY=1\nSTATUS=collecting from 1 device(s)"]
    assert messages[0] == ready[0]  # ready first, then the watchdog pings
    assert sum(m == "WATCHDOG=1" for m in messages) >= 3
    assert any(m.startswith("STOPPING=1") for m in messages)


@pytest.mark.parametrize("journald", [False, True])
def test_logs_as_json_lines_or_text_without_a_second_timestamp_under_journald(
    tmp_path: Path, journald: bool
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "collector": {"id": "pc1", "site": "s", "line": "l"},
                # A folder that does not exist: start-up fails with one clear line.
                "buffer": {"path": str(tmp_path / "missing" / "b.db")},
                "health": {"port": 0},
                "devices": [
                    {
                        "name": "d",
                        "protocol": "modbus_tcp",
                        "host": "127.0.0.1",
                        "tags": [{"name": "t", "table": "coil", "address": 0, "type": "bool"}],
                    }
                ],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journald:
        env["JOURNAL_STREAM"] = "8:1234"
    runs = {
        fmt: subprocess.run(
            [
                sys.executable,
                "-m",
                "collector",
                "--log-format",
                fmt,
                "run",
                "--config",
                str(config),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for fmt in ("json", "text")
    }
    assert {r.returncode for r in runs.values()} == {1}
    # The config's warning (the buffer folder does not exist yet), then the start-up error.
    warning, line = [json.loads(x) for x in runs["json"].stderr.splitlines()]
    assert warning["level"] == "WARNING"
    assert "does not exist (yet)" in warning["message"]
    assert line["level"] == "ERROR"
    assert line["logger"] == "collector"
    assert line["message"].startswith("cannot start: buffer ")
    assert ("ts" in line) is not journald
    _, text = runs["text"].stderr.splitlines()
    assert text.startswith("ERROR collector: cannot start") is journald
