"""Hot reload (SIGHUP): a valid config restarts only the devices that changed, keeps the others
polling and the station's unit; an invalid one is refused, said once, shown on /health, and the
running config stays. Real parts: pymodbus server, mosquitto, SQLite, the collector process."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import yaml

from collector.config import Config, load_config
from drivers.modbus.sim import SimulatedModbusServer
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    assert_no_gaps,
    async_wait_until,
    config_dict,
    set_tester,
    start_collector,
)


def with_changes(raw: dict[str, Any]) -> dict[str, Any]:
    """fixture-1 gets a second tag, fixture-2 appears, tester-1 stays as it was."""
    changed = yaml.safe_load(yaml.safe_dump(raw))
    fixture = changed["devices"][1]
    fixture["tags"].append({"name": "clamp2", "table": "coil", "address": 1, "type": "bool"})
    changed["devices"].append(
        {
            **fixture,
            "name": "fixture-2",
            "unit_id": 1,
            "tags": [{"name": "door", "table": "coil", "address": 2, "type": "bool"}],
        }
    )
    return changed


def meta_messages(sub: Subscriber, device: str, count: int) -> list[dict[str, Any]] | None:
    """The retained metadata messages of a device received so far, once there are ``count``."""
    with sub._lock:
        found = [json.loads(p) for t, p, _ in sub.messages if t.endswith(f"/meta/{device}")]
    return found if len(found) >= count else None


async def test_reload_restarts_only_what_changed_and_refuses_a_broken_config(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    await set_tester(modbus_server, config, voltage=3.5, serial="SN0001", result=0)
    sub = Subscriber(mosquitto, TOPIC)
    try:
        async with RunningService(config) as running:
            service = running.service
            service.config_path = path
            await async_wait_until(lambda: service.context.current_serial("ft-1"), 10, "unit")
            tester_task = service._polling["tester-1"]
            # 1. A valid change.
            path.write_text(yaml.safe_dump(with_changes(raw)))
            assert await service.reload() is True
            assert service._polling["tester-1"] is tester_task  # kept polling, not restarted
            assert service.reload_state is not None
            assert service.reload_state["restarted"] == ["fixture-1"]
            assert service.reload_state["added"] == ["fixture-2"]
            assert service.context.current_serial("ft-1") == "SN0001"  # the unit stays
            await async_wait_until(
                lambda: {"clamp2", "door"} <= {r["tag"] for r in sub.readings()},
                10,
                "readings of the changed and the new device",
            )
            # Tag metadata: republished (retained) for the changed and the new device, and
            # the changed device's polls refer to its new version.
            metas = await async_wait_until(lambda: meta_messages(sub, "fixture-1", 2), 10, "meta")
            assert [set(m["tags"]) for m in metas] == [{"clamp"}, {"clamp", "clamp2"}]
            assert metas[0]["meta"] != metas[1]["meta"]
            assert await async_wait_until(lambda: meta_messages(sub, "fixture-2", 1), 10, "new")
            await async_wait_until(
                lambda: any(p.get("meta") == metas[1]["meta"] for p in sub.polls("fixture-1")),
                10,
                "polls with the new metadata",
            )
            # 2. A broken config: refused, the running one stays and keeps polling.
            path.write_text(path.read_text().replace("poll_interval_ms", "poll_intervall_ms", 1))
            assert await service.reload() is False
            state, reasons = service.health()
            assert state == "degraded"
            assert any(
                r.startswith("config reload refused, the running config stays: ")
                and "poll_intervall_ms: unknown key" in r
                for r in reasons
            )
            polls = service.devices["tester-1"].polls
            await async_wait_until(
                lambda: service.devices["tester-1"].polls > polls + 5, 10, "polling goes on"
            )
            status = await service.status()
            assert status["config"]["last_reload"]["ok"] is False
            assert len(service._polling) == 3
            # 3. A broker change needs a restart: said, not applied.
            fixed = with_changes(raw)
            fixed["mqtt"]["port"] = 1
            path.write_text(yaml.safe_dump(fixed))
            assert await service.reload() is True
            assert service.reload_state["not_applied_until_restart"] == ["mqtt"]
            assert service.config.mqtt.port == mosquitto.port
            assert service.health()[0] == "ok"
            last = (await service.outbox.stats()).last_seq
            await async_wait_until(lambda: sub.has_all(last), 10, "everything delivered")
    finally:
        sub.close()
    assert_no_gaps(sub.seqs())


async def test_sighup_reloads_the_running_process(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    raw = config_dict(mosquitto, modbus_server.port, tmp_path / "b.db")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    await set_tester(modbus_server, Config.model_validate(raw), voltage=1.0, serial="SN1")
    sub = Subscriber(mosquitto, TOPIC)
    process = await start_collector(path)
    assert process.stderr is not None
    log: list[str] = []

    async def log_until(text: str) -> None:
        async def read() -> None:
            while not any(text in line for line in log):
                line = await process.stderr.readline()  # type: ignore[union-attr]
                assert line, f"the collector ended before logging {text!r}: {log}"
                log.append(line.decode())

        await asyncio.wait_for(read(), 20)

    try:
        await async_wait_until(sub.readings, 20, "first readings")
        path.write_text("devices: [\n")
        process.send_signal(signal.SIGHUP)
        await log_until("is invalid; the running config stays")
        assert process.returncode is None
        path.write_text(yaml.safe_dump(with_changes(raw)))
        process.send_signal(signal.SIGHUP)
        await log_until("reload: ")
        await log_until("taken")
        await async_wait_until(
            lambda: any(r["device"] == "fixture-2" for r in sub.readings()),
            10,
            "the new device's readings",
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
        sub.close()
    assert_no_gaps(sub.seqs())
