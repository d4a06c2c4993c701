"""OPC-UA failures a technician can act on, against a real asyncua server: a server that does
not trust our certificate yet, a server at its connection limit, a server that goes away (one
line per episode, no asyncua traceback), and subscribed changes handed over as they arrive.

The server that refuses our certificate behaves as node-opcua does (an ERR message with
BadSecurityChecksFailed in answer to the secure OpenSecureChannel): a small proxy in front of
the real secure rack, which passes the discovery connection through and answers the secure
channel request itself. asyncua's server checks client certificates only later, at
CreateSession.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.server.internal_session import InternalSession
from asyncua.ua.ua_binary import uatcp_to_binary

from collector.acquisition.poller import DeviceStatus, Poller
from common.backoff import Backoff
from contract.codes import ErrorCode
from contract.records import Reading
from drivers.base import NotConnectedError
from drivers.opcua.certificates import load_der
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.sim import SimulatedBurnInRack
from tests.helpers import LoopbackTcpServer, async_wait_until, collector
from tests.opcua_fixtures import device, secure_device


class RefusingChannelProxy(LoopbackTcpServer):
    """Forwards to ``target_port``, except a secure OpenSecureChannel request (a policy other
    than None), which it answers with an ERR message (``status``) and a closed socket."""

    def __init__(self, target_port: int, status: int = ua.StatusCodes.BadSecurityChecksFailed):
        super().__init__()
        self.target_port, self.status = target_port, status
        self.refused = 0

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/rack"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        back = self._track(asyncio.create_task(self._pump(up_reader, writer)))
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                header = await reader.readexactly(8)
                size = struct.unpack("<I", header[4:8])[0]
                body = await reader.readexactly(size - 8)
                if header[:3] == b"OPN":
                    uri_length = struct.unpack("<i", body[4:8])[0]
                    uri = body[8 : 8 + uri_length].decode()
                    if not uri.endswith("#None"):
                        self.refused += 1
                        error = ua.ErrorMessage(ua.StatusCode(self.status), "untrusted")
                        writer.write(uatcp_to_binary(ua.MessageType.Error, error))
                        await writer.drain()
                        break
                up_writer.write(header + body)
                await up_writer.drain()
        writer.close()
        up_writer.close()
        back.cancel()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.close()


@pytest.fixture
async def refusing(secure_rack: SimulatedBurnInRack) -> AsyncIterator[RefusingChannelProxy]:
    proxy = RefusingChannelProxy(secure_rack.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if r.name.startswith("asyncua")]


async def test_a_server_that_does_not_trust_our_certificate_says_so_once(
    secure_rack: SimulatedBurnInRack,
    refusing: RefusingChannelProxy,
    pki: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "pw").write_text("line-pw\n")
    config = secure_device(secure_rack, {**pki, "pw": tmp_path / "pw"}, "server_cert", "pw")
    config = config.model_copy(update={"endpoint": refusing.endpoint})
    ours = hashlib.sha256(load_der(pki["client_cert"])).hexdigest()
    driver = OpcUaDriver(config)
    with pytest.raises(NotConnectedError) as info:
        await driver.connect()
    assert refusing.refused == 1
    assert info.value.code is ErrorCode.SECURITY
    message = str(info.value)
    assert "the server does not trust this collector's certificate yet" in message
    assert f"trust {pki['client_cert']} (sha256 {ours}) on the server" in message
    # Under the poller: one line per episode, no traceback, asyncua's own log quiet.
    status = DeviceStatus("rack-1", "opcua", None)
    poller = Poller(driver, status, 0.1, lambda *_: None, Backoff(0.05, 0.2))
    with caplog.at_level(logging.DEBUG):
        task = asyncio.create_task(poller.run())
        try:
            await async_wait_until(lambda: status.errors["security"] >= 3, 20, "retries")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert (status.last_error or "").startswith("security: ")
    downs = [r for r in caplog.records if "device rack-1: down" in r.getMessage()]
    assert len(downs) == 1
    no_tracebacks(caplog)


async def test_browse_of_a_server_that_does_not_trust_us_exits_with_the_message(
    refusing: RefusingChannelProxy, pki: dict[str, Path]
) -> None:
    code, _out, err = await collector(
        "browse",
        refusing.endpoint,
        "--security",
        "Basic256Sha256,SignAndEncrypt",
        "--cert",
        str(pki["client_cert"]),
        "--key",
        str(pki["client_key"]),
        "--server-cert",
        str(pki["server_cert"]),
    )
    assert code == 1
    assert "Traceback" not in err
    assert "the server does not trust this collector's certificate yet" in err


async def test_browse_trusting_any_server_prints_and_saves_its_certificate(
    secure_rack: SimulatedBurnInRack, pki: dict[str, Path], tmp_path: Path
) -> None:
    saved = tmp_path / "rack.der"
    _code, out, err = await collector(
        "browse",
        secure_rack.endpoint,
        "--security",
        "Basic256Sha256,SignAndEncrypt",
        "--cert",
        str(pki["client_cert"]),
        "--key",
        str(pki["client_key"]),
        "--trust-any-server",
        "--save-server-cert",
        str(saved),
    )
    # The rack takes only its users: the session is refused, but the certificate was seen.
    server_der = load_der(pki["server_cert"])
    fingerprint = hashlib.sha256(server_der).hexdigest()
    assert f"server certificate sha256 {fingerprint}" in out
    assert saved.read_bytes() == server_der
    assert "Traceback" not in err


async def test_a_server_at_its_connection_limit_is_named_as_such() -> None:
    server = SimulatedBurnInRack(slots=1)
    await server.start()
    assert server.server is not None
    server.server.iserver.max_connections = 1
    # Another client holds the one connection the server allows.
    _reader, holder = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await asyncio.sleep(0.2)  # the server has taken it (connection_made) by now
        driver = OpcUaDriver(device(server, tags=[{"name": "t", "node": "i=2258"}]))
        with pytest.raises(NotConnectedError) as info:
            await driver.connect()
        await driver.close()
        message = str(info.value)
        assert "the server has reached its connection limit" in message
        assert "firewall" not in message
    finally:
        holder.close()
        await server.stop()


async def test_a_lost_server_is_one_line_per_episode_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = SimulatedBurnInRack(slots=1)
    await server.start()
    status = DeviceStatus("rack-1", "opcua", None)
    readings: list[Reading] = []
    # A subscription too: asyncua's publish loop logged a traceback at each server loss.
    tags = [
        {"name": "t", "node": "i=2258"},
        {"name": "s", "node": "i=2258", "collect": "subscribe"},
    ]
    poller = Poller(
        OpcUaDriver(device(server, tags=tags)),
        status,
        0.1,
        lambda _d, polled: readings.extend(polled),
        Backoff(0.05, 0.2),
    )
    with caplog.at_level(logging.DEBUG):
        task = asyncio.create_task(poller.run())
        try:
            await async_wait_until(lambda: readings, 10, "first readings")
            await server.stop()
            await async_wait_until(lambda: sum(status.errors.values()) >= 4, 20, "retries")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    downs = [r for r in caplog.records if "device rack-1: down" in r.getMessage()]
    assert len(downs) <= 2, [r.getMessage() for r in downs]  # the loss, then refused connects
    assert all(r.levelno == logging.ERROR for r in downs)
    no_tracebacks(caplog)


async def test_subscribed_changes_are_handed_over_as_they_arrive(
    rack: SimulatedBurnInRack,
) -> None:
    temp: dict[str, Any] = {
        "name": "temp",
        "node": f"ns={rack.namespace_index};s=Rack1.Slot01.Temp",
        "collect": "subscribe",
    }
    status = DeviceStatus("rack-1", "opcua", None)
    readings: list[Reading] = []
    # A poll every 60 s: a change seen within the wait below came without one.
    poller = Poller(
        OpcUaDriver(device(rack, tags=[temp])),
        status,
        60.0,
        lambda _d, got: readings.extend(got),
        Backoff(0.05, 0.2),
    )
    task = asyncio.create_task(poller.run())
    try:
        # The subscription's initial value comes first, without a poll.
        await async_wait_until(lambda: readings, 10, "the initial value")
        for value in (31.5, 32.5):
            await rack.set("Slot01.Temp", value)
            await async_wait_until(
                lambda v=value: any(r.value == v for r in readings), 10, f"change {value}"
            )
        assert status.polls == 0
        assert status.last_readings["temp"].value == 32.5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_server_at_its_session_limit_is_named_as_such(
    rack: SimulatedBurnInRack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncua's server answers ActivateSession with BadMaxConnectionsReached at its limit."""
    monkeypatch.setattr(InternalSession, "max_connections", 0)
    driver = OpcUaDriver(device(rack, tags=[{"name": "t", "node": "i=2258"}]))
    with pytest.raises(NotConnectedError) as info:
        await driver.connect()
    await driver.close()
    message = str(info.value)
    assert "the server has reached its connection limit (BadMaxConnectionsReached)" in message
    assert "firewall" not in message
