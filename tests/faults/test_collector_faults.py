"""Faults of the collector's own machine: crashes, a full disk, a corrupt buffer file."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import pytest
import yaml

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from tests.faults.conftest import SmallDisk
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
    write_config,
)


# Each kill is a start-up of a real collector: 20 take about 40 s on an idle 2-core machine,
# over 100 s when it is shared, so the default tier kills 5 times and the slow tier 20; the
# per-test default (120 s) is a hang detector, not a deadline for this one.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kills", [5, pytest.param(20, marks=pytest.mark.slow)])
async def test_sigkill_at_random_moments_many_times_in_a_row(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path, kills: int
) -> None:
    path = write_config(tmp_path / "c.yaml", mosquitto, modbus_server.port, tmp_path / "b.db")
    sub = Subscriber(mosquitto, TOPIC)
    rng = random.Random(20)
    process: asyncio.subprocess.Process | None = None
    try:
        for _ in range(kills):
            before = len(set(sub.seqs()))
            process = await start_collector(path)
            await async_wait_until(lambda b=before: len(set(sub.seqs())) > b, 20, "progress")
            # Anywhere in the cycle: mid-poll, mid-commit, mid-publish, before an ack.
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            process.kill()
            await process.wait()
        process = await start_collector(path)
        total = await asyncio.to_thread(_last_seq, tmp_path / "b.db")
        await async_wait_until(
            lambda: sub.has_all(total) and max(sub.seqs()) > total, 20, "everything after restart"
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process is not None and process.returncode is None:
            process.kill()
        sub.close()
    seqs = sub.seqs()
    assert_no_gaps(seqs)
    duplicates = len(seqs) - len(set(seqs))
    config = Config.model_validate(yaml.safe_load(path.read_text()))
    window = config.mqtt.max_inflight_messages * config.mqtt.max_readings_per_message
    print(f"{kills} kills: {len(set(seqs))} readings, {duplicates} duplicates")
    assert duplicates <= kills * window


def _last_seq(path: Path) -> int:
    from collector.buffer import Outbox

    box = Outbox(path, 5_000_000)
    try:
        return box.last_seq
    finally:
        box.close()


async def test_disk_full_under_the_buffer_degrades_and_recovers(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    small_disk: SmallDisk,
) -> None:
    # The consumer subscribes first (a durable session), as a real one would have.
    sub = Subscriber(mosquitto, TOPIC)
    mosquitto.stop()  # nothing leaves the buffer: it has to fill the disk
    raw = config_dict(
        mosquitto,
        modbus_server.port,
        small_disk.path / "b.db",
        reconnect_min_ms=100,
        reconnect_max_ms=500,
    )
    raw["devices"][0]["poll_interval_ms"] = 10
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    async with RunningService(config) as running:
        service = running.service
        if not small_disk.tmpfs:
            await service.outbox._call(
                lambda: service.outbox.outbox._conn.exec_driver_sql("PRAGMA max_page_count=64")
            )
        await async_wait_until(lambda: service.writer.last_error, 30, "the disk to fill up")
        assert "full" in service.writer.last_error  # type: ignore[operator]
        state, reasons = service.health()
        assert state == "degraded"
        assert any(r.startswith("buffer cannot write: database or disk is full") for r in reasons)
        status = await service.status()
        assert status["buffer"]["write_error"] == service.writer.last_error
        # Still alive and polling; readings wait in memory (bounded) meanwhile.
        polls = service.devices["tester-1"].polls
        await async_wait_until(lambda: service.devices["tester-1"].polls > polls + 10, 10, "polls")
        # Space comes back, and so does the broker.
        if small_disk.tmpfs:
            small_disk.grow()
        else:
            await service.outbox._call(
                lambda: service.outbox.outbox._conn.exec_driver_sql("PRAGMA max_page_count=100000")
            )
        await async_wait_until(lambda: service.writer.last_error is None, 20, "writing again")
        mosquitto.start()
        last = (await service.outbox.stats()).last_seq
        await async_wait_until(lambda: sub.has_all(last), 30, "delivered")
        await async_wait_until(lambda: service.health()[0] == "ok", 10, "health recovers")
    # The consumer stays until the collector has stopped: what it sends while stopping counts.
    sub.close()
    assert_no_gaps(sub.seqs())
    assert service.writer.overflow_dropped == 0


async def test_corrupt_buffer_file_is_moved_aside_and_the_service_starts(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    buffer = tmp_path / "b.db"
    path = write_config(tmp_path / "c.yaml", mosquitto, modbus_server.port, buffer)
    sub = Subscriber(mosquitto, TOPIC)
    try:
        process = await start_collector(path)
        await async_wait_until(lambda: len(sub.seqs()) >= 20, 20, "a first run")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        before = max(sub.seqs())
        with buffer.open("r+b") as f:  # a torn write, a bad sector: garbage in the header
            f.write(os.urandom(100))
        process = await start_collector(path)
        await async_wait_until(lambda: max(sub.seqs()) > before, 20, "readings after the reset")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    finally:
        sub.close()
    assert "CRITICAL collector.buffer: buffer" in log
    assert "is corrupt (file is not a database): moved aside to" in log
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("b.db.corrupt-")]
    assert len(moved) == 1
    after = sorted(s for s in set(sub.seqs()) if s > before)
    # seq never repeats: the fresh buffer continues far above everything handed out before.
    assert after[0] >= before + 1_000_000
    assert after == list(range(after[0], after[-1] + 1))


async def test_corrupt_buffer_shows_on_health_and_status(
    mosquitto: Mosquitto, modbus_server: SimulatedModbusServer, tmp_path: Path
) -> None:
    buffer = tmp_path / "b.db"
    buffer.write_bytes(b"this is not a database" * 100)
    config = Config.model_validate(config_dict(mosquitto, modbus_server.port, buffer))
    async with RunningService(config) as running:
        state, reasons = running.service.health()
        status = await running.service.status()
    assert state == "degraded"
    assert any(
        r.startswith("buffer was corrupt at start-up (file is not a database)") for r in reasons
    )
    assert status["buffer"]["reset"]["error"] == "file is not a database"
    assert Path(status["buffer"]["reset"]["moved_to"]).exists()
