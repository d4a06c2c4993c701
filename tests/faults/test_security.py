"""TLS to the broker (verified, with client certificates), and secrets kept out of sight."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from collector.config import Config
from drivers.modbus.sim import SimulatedModbusServer
from tests.conftest import require_mosquitto
from tests.faults.conftest import TlsFiles
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


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Mosquitto:
    require_mosquitto()
    broker = Mosquitto(
        tmp_path / "tls-broker",
        f"cafile {tls_files.ca}\ncertfile {tls_files.server_cert}\n"
        f"keyfile {tls_files.server_key}\nrequire_certificate true\n",
    )
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


def tls_config(
    broker: Mosquitto,
    modbus: SimulatedModbusServer,
    tmp_path: Path,
    ca: Path,
    cert: Path | None,
    key: Path | None,
) -> Config:
    raw = config_dict(
        broker, modbus.port, tmp_path / "b.db", reconnect_min_ms=100, reconnect_max_ms=300
    )
    raw["mqtt"]["tls"] = {"ca_file": str(ca)}
    if cert is not None:
        raw["mqtt"]["tls"].update(cert_file=str(cert), key_file=str(key))
    return Config.model_validate(raw)


async def test_tls_with_client_certificate_delivers(
    tls_broker: Mosquitto,
    tls_files: TlsFiles,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
) -> None:
    config = tls_config(
        tls_broker,
        modbus_server,
        tmp_path,
        tls_files.ca,
        tls_files.client_cert,
        tls_files.client_key,
    )
    await set_tester(modbus_server, config, voltage=1.0, serial="SN1", result=0)
    sub = Subscriber(
        tls_broker, TOPIC, tls=(tls_files.ca, tls_files.client_cert, tls_files.client_key)
    )
    try:
        async with RunningService(config):
            await async_wait_until(lambda: len(sub.seqs()) >= 30, 15, "readings over TLS")
    finally:
        sub.close()
    assert_no_gaps(sub.seqs())


async def test_wrong_ca_is_refused_with_a_clear_error_and_retried(
    tls_broker: Mosquitto,
    tls_files: TlsFiles,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
) -> None:
    config = tls_config(
        tls_broker,
        modbus_server,
        tmp_path,
        tls_files.other_ca,
        tls_files.client_cert,
        tls_files.client_key,
    )
    async with RunningService(config) as running:
        service = running.service
        await async_wait_until(lambda: service.mqtt.last_connect_error, 10, "a connect error")
        error = service.mqtt.last_connect_error
        assert error is not None
        assert error.startswith(f"cannot connect to 127.0.0.1:{tls_broker.port}:")
        assert "CERTIFICATE_VERIFY_FAILED" in error
        state, reasons = service.health()
        assert state == "degraded"
        assert f"mqtt not connected: {error}" in reasons
        # It keeps trying (and buffering), and never falls back to plaintext.
        depth = service.outbox.outbox.depth
        await async_wait_until(lambda: service.outbox.outbox.depth > depth + 20, 10, "buffering")
        assert service.mqtt.connects == 0


async def refused_tls(config: Config, caplog: pytest.LogCaptureFixture, alert: str) -> str:
    """Run until the connect error names ``alert``; check it is on /health, logged once, and
    that nothing ever connected. Returns the error."""
    with caplog.at_level(logging.INFO):
        async with RunningService(config) as running:
            service = running.service
            await async_wait_until(
                # Each attempt shows the alert or loses it (a broker that closes at once):
                # the bound allows many attempts on a crowded machine.
                lambda: alert in (service.mqtt.last_connect_error or ""), 30, alert
            )
            error = service.mqtt.last_connect_error
            assert error is not None
            # Retried with backoff meanwhile; the same reason is not logged again.
            connects = service.mqtt.connects
            await asyncio.sleep(1.0)
            state, reasons = service.health()
            assert (connects, service.mqtt.connects) == (0, 0)
            assert not service.mqtt.connected
    assert state == "degraded"
    assert f"mqtt not connected: {error}" in reasons
    logged = [r.getMessage() for r in caplog.records if alert in r.getMessage()]
    assert len(logged) == 1, logged
    assert "Unspecified error" not in caplog.text
    return error


async def test_broker_requires_a_client_certificate(
    tls_broker: Mosquitto,
    tls_files: TlsFiles,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = tls_config(tls_broker, modbus_server, tmp_path, tls_files.ca, None, None)
    error = await refused_tls(config, caplog, "certificate required")
    assert "set mqtt.tls.cert_file and mqtt.tls.key_file" in error


async def test_a_client_certificate_the_broker_does_not_trust_is_named(
    tls_broker: Mosquitto,
    tls_files: TlsFiles,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = tls_config(
        tls_broker,
        modbus_server,
        tmp_path,
        tls_files.ca,
        tls_files.stranger_cert,
        tls_files.stranger_key,
    )
    error = await refused_tls(config, caplog, "unknown ca")
    assert "signed by a CA in the broker's cafile" in error


async def test_plaintext_to_a_tls_port_says_so(
    tls_broker: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    raw = config_dict(
        tls_broker,
        modbus_server.port,
        tmp_path / "b.db",
        reconnect_min_ms=100,
        reconnect_max_ms=300,
    )
    error = await refused_tls(Config.model_validate(raw), caplog, "a TLS port?")
    assert "set mqtt.tls" in error


async def test_secrets_are_never_shown_and_loose_files_are_warned_about(
    mosquitto: Mosquitto,
    modbus_server: SimulatedModbusServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cr3t-Zq7\n")
    secret.chmod(0o644)
    raw = config_dict(
        mosquitto,
        modbus_server.port,
        tmp_path / "b.db",
        username="collector",
        password_file=str(secret),
    )
    config = Config.model_validate(raw)
    with caplog.at_level(logging.DEBUG):
        async with RunningService(config) as running:
            status = await running.service.status()
            server = running.service.health_server
            assert server is not None
            bound = server.socket.getsockname()[0]
    assert bound == "127.0.0.1"  # the default: loopback only
    assert f"mqtt.password_file {secret} is readable by every user (mode 0o644)" in caplog.text
    assert "s3cr3t-Zq7" not in caplog.text
    assert "s3cr3t-Zq7" not in str(status)
    assert "s3cr3t-Zq7" not in repr(config)
