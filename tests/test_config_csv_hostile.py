"""A register map (``tags_csv``) that cannot be read is a problem like any other (issue 25,
item 1): ``collector check`` and ``run`` say ``FILE:LINE: path: problem`` and exit 2, and a
reload (SIGHUP) refuses it, says so on /status and in the log, and sends READY=1 again. Real
parts: the CLI in a process, pymodbus server, mosquitto, SQLite, a systemd notify socket."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import yaml

from collector.config import load_config
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import CASES, Mosquitto, RunningService, async_wait_until, config_dict, run_cli

HUGE_CELL = (
    "name,table,address,type\nok,holding_register,0,uint16\nbig,holding_register,1,"
    + ("x" * 140_000)
    + "\n"
)
GOOD_MAP = "name,table,address,type\nextra,holding_register,20,uint16\n"


def _with_map(text: str, tags: str = "    tags:\n") -> str:
    """small-line.yaml with ``tags_csv: map.csv`` beside the first device's tags."""
    return text.replace("    tags:\n", f"    tags_csv: map.csv\n{tags}", 1)


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_cell_over_128_kib_is_a_problem_not_a_traceback(tmp_path: Path, command: str) -> None:
    (tmp_path / "map.csv").write_text(HUGE_CELL)
    path = tmp_path / "line.yaml"
    text = (CASES / "small-line.yaml").read_text().replace("/tmp/buffer.db", str(tmp_path / "b.db"))
    path.write_text(_with_map(text))
    result = run_cli(command, "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (
        f"{tmp_path / 'map.csv'}:3: (file): not a CSV register map: field larger than field "
        "limit (131072)"
    ) in (result.stdout + result.stderr).splitlines()


def test_tags_that_are_not_a_list_beside_a_map_are_a_problem(tmp_path: Path) -> None:
    (tmp_path / "map.csv").write_text(GOOD_MAP)
    path = tmp_path / "line.yaml"
    text = (CASES / "small-line.yaml").read_text().replace("/tmp/buffer.db", str(tmp_path / "b.db"))
    path.write_text(_with_map(text, "    tags: 5\n    old_tags:\n"))
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{path}:17: devices[0].tags: Input should be a valid list; got 5" in (
        result.stdout.splitlines()
    )


async def test_a_reload_with_an_unreadable_map_is_refused_and_says_so(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    address = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(address))
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(address))

    def drain() -> list[str]:
        out = []
        while True:
            try:
                out.append(notify.recv(4096).decode())
            except BlockingIOError:
                return out

    try:
        async with RunningService(config) as running:
            service = running.service
            service.config_path = path
            tester = service.devices["tester-1"]
            await async_wait_until(lambda: tester.polls >= 2, 10, "polling")
            # A good reload first: the refusals below must replace its result on /status.
            raw["devices"][0]["poll_interval_ms"] = 200
            path.write_text(yaml.safe_dump(raw))
            assert await service.reload() is True
            drain()
            (tmp_path / "map.csv").write_text(HUGE_CELL)
            with_map = yaml.safe_dump(
                {**raw, "devices": [{**raw["devices"][0], "tags_csv": "map.csv"}]}
            )
            not_a_list = with_map.replace("  tags:\n", "  tags: 5\n  old_tags:\n", 1)
            expected = [
                f"{tmp_path / 'map.csv'}:3: (file): not a CSV register map: field larger than "
                "field limit (131072)",
                f"{path}:",  # tags: 5 (its line depends on the dump)
            ]
            for text, first in zip((with_map, not_a_list), expected, strict=True):
                caplog.clear()
                path.write_text(text)
                assert await service.reload() is False
                status = await service.status()
                last = status["config"]["last_reload"]
                assert last["ok"] is False
                assert last["problems"][0].startswith(first), last
                assert drain() == [
                    "RELOADING=1",
                    "READY=1\nSTATUS=config reload refused: invalid config",
                ]
                logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert len(logged) == 1
                assert "the running config stays" in logged[0].getMessage()
                assert logged[0].exc_info is None
            assert "devices[0].tags: Input should be a valid list; got 5" in last["problems"][0]
            tester = service.devices["tester-1"]  # restarted by the good reload, then kept
            polls = tester.polls
            await async_wait_until(lambda: tester.polls >= polls + 3, 10, "polling goes on")
    finally:
        notify.close()
