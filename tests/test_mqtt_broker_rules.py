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


def start_secured(work: Path, max_queued: int = 1_000_000) -> Mosquitto:
    """A mosquitto with a password file and an ACL that refuses the readings."""
    require_mosquitto()
    work.mkdir()
    passwd = work / "passwd"
    passwd.touch()
    for user, password in [("collector", "collector-pw"), ("consumer", "consumer-pw")]:
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    acl(work / "acl", allow_readings=False)
    broker = Mosquitto(
        work,
        anonymous=False,
        extra_conf=f"password_file {passwd}\nacl_file {work / 'acl'}\n",
        max_queued=max_queued,
    )
    broker.start()
    return broker


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = start_secured(tmp_path / "secured")
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
            await async_wait_until(lambda: service.mqtt.rejected, 30, "a refused publish")
            # A refusal comes in a PUBACK, so the collector had authenticated with the password
            # from the environment. (The forwarder retries the kept batch after a backoff.)
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


# Its two waits are 90 s and 60 s (about 25 s and 2 s on an idle machine): the test's own
# timeout must be above their sum, or a slow machine ends it with a stack dump, not the step.
@pytest.mark.timeout(180)
async def test_a_broker_that_ends_the_connection_after_each_refusal_splits_and_quarantines_nothing(
    modbus_server: SimulatedModbusServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mosquitto 2.0.11 with ``max_queued_messages 0`` ends a client's connection after every
    publish it refuses; with more messages in flight behind the refused one, its PUBACK is
    often lost in the reset (the broker closes a socket that holds unread data). The lost
    connections must not be taken for a broker that drops large messages: no reading split
    off, none quarantined, no message size learned; all delivered once the ACL allows them."""
    broker = start_secured(tmp_path / "secured", max_queued=0)
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "collector-pw")
    raw = config_dict(
        broker,
        modbus_server.port,
        tmp_path / "b.db",
        username="collector",
        password_env="TEST_MQTT_PASSWORD",
        reconnect_min_ms=100,
        reconnect_max_ms=300,
        max_readings_per_message=5,  # a backlog goes out as many messages in flight at once
    )
    config = Config.model_validate(raw)
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    sub = Subscriber(broker, TOPIC, username="consumer", password="consumer-pw")
    try:
        async with RunningService(config) as running:
            service = running.service
            # Each refusal costs a connection (and a refused stream waits the reconnect backoff,
            # 100-300 ms here): twenty of them, with the readings refused throughout.
            await async_wait_until(lambda: service.mqtt.connects >= 20, 90, "reconnects")
            assert service.mqtt.quarantined == 0
            assert service.forwarder._learned_max_bytes is None
            assert sub.readings() == []
            acl(broker.workdir / "acl", allow_readings=True)
            broker.reload()
            buffered = (await service.outbox.stats()).last_seq
            await async_wait_until(lambda: sub.has_all(buffered), 60, "delivered once allowed")
            assert service.mqtt.quarantined == 0
            assert service.outbox.outbox.quarantined_total == 0
    finally:
        sub.close()
        broker.stop()
    assert_no_gaps(sub.seqs())


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
