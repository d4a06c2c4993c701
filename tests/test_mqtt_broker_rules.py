"""The forwarder against a mosquitto that authenticates and authorises (password file, ACL)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from tests.conftest import require_mosquitto
from tests.helpers import (
    TOPIC,
    Mosquitto,
    RunningService,
    Subscriber,
    assert_no_gaps,
    async_wait_until,
    config_dict,
    set_tester,
)

STATUS = "collector/plant-a/line-1/pc1/status"
READINGS = "collector/plant-a/line-1/pc1/readings"
CONTEXTS = "collector/plant-a/line-1/pc1/context/#"


def acl(path: Path, allow_readings: bool) -> None:
    path.write_text(
        "user collector\n"
        f"topic write {STATUS}\n"
        f"topic write {CONTEXTS}\n"  # the unit contexts (schema 3) the readings name
        + (f"topic write {READINGS}\n" if allow_readings else "")
        + "user consumer\ntopic read collector/#\n"
    )


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A mosquitto with a password file and an ACL."""
    require_mosquitto()
    work = tmp_path / "secured"
    work.mkdir()
    passwd = work / "passwd"
    passwd.touch()
    for user, password in [("collector", "collector-pw"), ("consumer", "consumer-pw")]:
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    acl(work / "acl", allow_readings=False)
    broker = Mosquitto(
        work, anonymous=False, extra_conf=f"password_file {passwd}\nacl_file {work / 'acl'}\n"
    )
    broker.start()
    yield broker
    broker.stop()


async def test_refused_publish_is_kept_and_delivered_once_allowed(
    secured_broker: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "collector-pw")
    raw = config_dict(
        secured_broker,
        modbus_server.port,
        tmp_path / "b.db",
        username="collector",
        password_env="TEST_MQTT_PASSWORD",
    )
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    sub = Subscriber(secured_broker, TOPIC, username="consumer", password="consumer-pw")
    try:
        async with RunningService(config) as running:
            service = running.service
            # The tests' mosquitto (2.0.11, max_queued_messages 0) ends the connection after
            # every refused publish, the tag metadata's first: each costs a reconnect backoff
            # (1 s, 2 s, 4 s, ...) before the readings' own refusal can arrive.
            await async_wait_until(lambda: service.mqtt.rejected, 30, "a refused publish")
            # A refusal comes in a PUBACK, so the collector had authenticated with the password
            # from the environment. (The forwarder reconnects and retries the kept batch after
            # a backoff.)
            assert "Not authorized" in next(iter(service.mqtt.rejected))
            assert sub.readings() == []
            assert service.outbox.outbox.depth > 0  # refused readings are kept
            status = await service.status()
            assert status["mqtt"]["rejected"]
            assert "collector-pw" not in str(status)
            # The operator fixes the ACL; the broker reloads it; the backlog goes through.
            acl(secured_broker.workdir / "acl", allow_readings=True)
            secured_broker.reload()
            buffered = (await service.outbox.stats()).last_seq
            await async_wait_until(
                lambda: sub.has_all(buffered),
                30,
                "refused readings delivered after the ACL allows them",
            )
    finally:
        sub.close()
    assert_no_gaps(sub.seqs())
    # The ACL still refuses the tag metadata: no positional poll went out without it (those
    # buffered before the refusal were rewritten keyed), so every tag is named.
    assert sub.metas() == []
    assert all("tags" in p for m in sub.payloads() for p in m["polls"])
    assert {r["tag"] for r in sub.readings() if r["device"] == "tester-1"} == {
        "voltage",
        "serial",
        "result",
    }


async def test_wrong_password_is_reported_and_retried(
    secured_broker: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "not-the-pw-Xq93")
    config = Config.model_validate(
        config_dict(
            secured_broker,
            modbus_server.port,
            tmp_path / "b.db",
            username="collector",
            password_env="TEST_MQTT_PASSWORD",
        )
    )
    async with RunningService(config) as running:
        service = running.service
        await async_wait_until(lambda: service.mqtt.last_connect_error, 10, "connect refusal")
        error = service.mqtt.last_connect_error
        assert error in (
            "refused by broker: Bad user name or password",
            "refused by broker: Not authorized",
        ), error
        state, reasons = service.health()
        assert state == "degraded"
        assert f"mqtt not connected: {error}" in reasons
        assert "Xq93" not in str(await service.status())  # the password is never shown
        await async_wait_until(lambda: service.outbox.outbox.depth > 10, 10, "still buffering")
