"""Modbus TCP and RTU drivers: the only module that imports pymodbus's client.

:class:`ModbusTcpDriver` and :class:`ModbusRtuDriver` fulfil the driver contract (connect /
read / close) on pymodbus's async clients, translating its exceptions and exception replies
into :mod:`common.errors`; the request plan and the decoding are pure (drivers.modbus.plan,
drivers.modbus.codec). :meth:`request` is the one-request method the technician tools use
(drivers.modbus.tools).

pymodbus renamed its unit keyword twice (``unit=`` -> ``slave=`` -> ``device_id=``); keeping it
here means API churn touches one file (and the simulator, drivers.modbus.sim).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import DecodePDU, ModbusPDU

from contract.codes import ErrorCode
from contract.records import Reading
from drivers.base import NotConnectedError, RequestError
from drivers.modbus.config import ModbusRtuDevice, ModbusTable, ModbusTcpDevice
from drivers.modbus.plan import (
    FUNCTION_CODE,
    Request,
    check_reply,
    plan_for_device,
    readings_from_reply,
)

# pymodbus logs every failed connect and every timeout itself; the collector counts those and
# logs once per episode, so the library's own log would only be a flood.
_PYMODBUS_LOG = logging.getLogger("pymodbus")
_PYMODBUS_LOG.setLevel(logging.CRITICAL)


def _quiet_reply(base: type[ModbusPDU]) -> type[ModbusPDU]:
    """``base`` (a reply class) with a ``str()`` that formats the reply only while pymodbus
    logs at DEBUG. pymodbus builds ``str()`` of every reply it decodes for a debug line, before
    its log level is looked at: a 100-register reply costs about 8 µs per request for a line
    never written (issue 28)."""

    def __str__(self: ModbusPDU) -> str:
        return base.__str__(self) if _PYMODBUS_LOG.isEnabledFor(logging.DEBUG) else base.__name__

    return type(base.__name__, (base,), {"__str__": __str__, "__module__": __name__})


def _quiet_replies() -> list[type[ModbusPDU]]:
    """The reply classes of the four reads, as pymodbus decodes them, quiet (above); none if
    this pymodbus looks them up differently (its own classes are then used, as before)."""
    try:
        decoder = DecodePDU(is_server=False)
        found = [decoder.lookupPduClass(bytes((0, code))) for code in FUNCTION_CODE.values()]
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        return []
    return [_quiet_reply(base) for base in found if isinstance(base, type)]


_QUIET_REPLIES = _quiet_replies()


def _register_quiet_replies(client: Any) -> None:
    """Have the client decode the reads' replies as the quiet classes (pymodbus's documented
    ``register`` of a reply class; decoding and every field are the library's own)."""
    for reply in _QUIET_REPLIES:
        client.register(reply)


class _UndecodableFrameFilter(logging.Filter):
    """A reply pymodbus cannot decode raises inside its protocol's ``data_received``; asyncio
    then logs "Fatal error: protocol.data_received() call failed" at ERROR with a traceback
    that names only a file descriptor, and closes the link. The driver reports it as
    ``bad_frame`` and the poller logs one line per episode naming the device: this record
    (pymodbus's only) is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "asyncio" or not isinstance(record.msg, str):
            return True
        return not ("data_received() call failed" in record.msg and "<pymodbus." in record.msg)


logging.getLogger("asyncio").addFilter(_UndecodableFrameFilter())


class _LinkClosed(ConnectionException):
    """The link closed while a request waited for its reply."""

    def __init__(self, why: Exception | None) -> None:
        self.why = "the device closed the link" if why is None else f"the link failed: {why}"
        super().__init__(self.why)


class _Traffic:
    """What arrived on a link, counted by pymodbus's trace hooks: bytes and decoded frames.
    Bytes without a frame mean garbled replies (bad_frame), not silence (timeout)."""

    def __init__(self) -> None:
        self.received_bytes = 0
        self.frames = 0
        self.requests_waiting = 0

    def watch(self, client: Any) -> None:
        """Count every byte the client's protocol receives, before pymodbus looks at it. Its
        trace_packet hook is not enough: pymodbus drops a receive buffer over its frame size
        (260 bytes for TCP) without calling it, so a flood of junk, a long reply with a wrong
        byte count or an MBAP length of 65535 followed by its body looked like silence."""
        protocol = client.ctx  # the TransactionManager: TCP's data_received ends up here too
        received: Callable[[bytes, Any], None] = protocol.datagram_received

        def counted(data: bytes, addr: Any) -> None:
            self.received_bytes += len(data)
            received(data, addr)

        protocol.datagram_received = counted

        # pymodbus waits out a request's whole timeout even when the device has closed the
        # link under it, and then reports "No response received": a device that went away
        # looked like a silent one (timeout) and was noticed a timeout late. Its waiting
        # request now fails at once as a lost connection.
        disconnected: Callable[[Exception | None], None] = protocol.callback_disconnected

        def lost(exc: Exception | None) -> None:
            disconnected(exc)
            future = protocol.response_future
            if self.requests_waiting and not future.done():
                future.set_exception(_LinkClosed(exc))

        protocol.callback_disconnected = lost

    def pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.frames += 1
        return pdu


ModbusDevice = ModbusTcpDevice | ModbusRtuDevice

# Polls in a row in which every request timed out before a unit counts as down (and the core
# backs it off): on a shared RS-485 bus a silent unit then costs its timeout only now and then.
SILENT_POLLS_BEFORE_DOWN = 3


class _ModbusDriver:
    """The request plan, reads and reply checks shared by TCP and RTU."""

    def __init__(self, device: ModbusDevice, clock: Callable[[], float] = time.time) -> None:
        self._device = device
        self._clock = clock
        self._plan = plan_for_device(device)
        self._silent_polls = 0
        # Each request waits at most timeout_ms; one more timeout is margin for the event loop.
        # Worked out once: the poller asks for it at every poll.
        self._max_read_seconds = device.timeout_ms / 1000 * (len(self._plan) + 1)

    @property
    def plan(self) -> list[Request]:
        return list(self._plan)

    @property
    def max_read_seconds(self) -> float:
        return self._max_read_seconds

    def _describe(self, where: str) -> str:
        d = self._device
        spans = ", ".join(str(r) for r in self._plan)
        return (
            f"{d.protocol} {where} unit {d.unit_id}: {len(d.tags)} tags -> "
            f"{len(self._plan)} request(s) per poll: {spans}"
        )

    def details(self) -> dict[str, Any]:
        return {"requests": [str(r) for r in self._plan]}

    def _client(self) -> Any:
        raise NotImplementedError

    def _traffic(self) -> _Traffic | None:
        return None

    def _received_mark(self) -> tuple[int, int]:
        traffic = self._traffic()
        return (0, 0) if traffic is None else (traffic.received_bytes, traffic.frames)

    def _garbled_since(self, mark: tuple[int, int]) -> bool:
        """Whether bytes arrived since ``mark`` that made no valid frame: a reply that failed
        its CRC (noise, a wrong baud rate, two units answering at once) or that pymodbus
        could not decode (a device or gateway speaking something else)."""
        traffic = self._traffic()
        return (
            traffic is not None and traffic.received_bytes > mark[0] and traffic.frames == mark[1]
        )

    async def read(self) -> list[Reading]:
        readings: list[Reading] = []
        timeouts = 0
        for request in self._plan:
            try:
                values = await self._execute(request)
            except RequestError as exc:
                code = exc.code
                if code is ErrorCode.TIMEOUT:
                    timeouts += 1
                ts = self._clock()
                readings.extend(Reading.bad(ts, c.tag.name, code, c.tag.unit) for c in request.tags)
                continue
            readings.extend(readings_from_reply(request, values, self._clock()))
        self._silent_polls = self._silent_polls + 1 if timeouts == len(self._plan) else 0
        if self._silent_polls >= SILENT_POLLS_BEFORE_DOWN:
            self._silent_polls = 0
            raise NotConnectedError(
                f"unit {self._device.unit_id} did not answer {SILENT_POLLS_BEFORE_DOWN} polls "
                "in a row",
                ErrorCode.TIMEOUT,
            )
        return readings

    @property
    def connected(self) -> bool:
        client = self._client()
        return client is not None and bool(client.connected)

    async def request(
        self, table: ModbusTable, address: int, count: int, unit_id: int | None = None
    ) -> list[int] | list[bool]:
        """One read of ``count`` registers or bits, as the device answers it (for the
        technician tools: probe, scan). ``unit_id`` overrides the device's, for a scan behind
        a gateway. Raises NotConnectedError or RequestError."""
        return list(await self._execute(Request(table, address, count, ()), unit_id))

    async def _execute(
        self, request: Request, unit_id: int | None = None
    ) -> Sequence[int] | Sequence[bool]:
        client = self._client()
        if client is None or not client.connected:
            raise NotConnectedError("not connected")
        unit = self._device.unit_id if unit_id is None else unit_id
        read: Callable[..., Any] = {
            ModbusTable.COIL: client.read_coils,
            ModbusTable.DISCRETE_INPUT: client.read_discrete_inputs,
            ModbusTable.HOLDING_REGISTER: client.read_holding_registers,
            ModbusTable.INPUT_REGISTER: client.read_input_registers,
        }[request.table]
        mark = self._received_mark()
        traffic = self._traffic()
        if traffic is not None:
            traffic.requests_waiting += 1
        try:
            reply = await read(request.address, count=request.count, device_id=unit)
        except ConnectionException as exc:
            why = exc.why if isinstance(exc, _LinkClosed) else str(exc)
            if self._garbled_since(mark):  # asyncio closes the link on an undecodable reply
                raise NotConnectedError(
                    f"reply that is no valid Modbus frame, link closed: {why}",
                    ErrorCode.BAD_FRAME,
                ) from exc
            raise NotConnectedError(f"connection lost: {why}") from exc
        except ModbusIOException as exc:
            garbled = self._garbled_since(mark)
            code = ErrorCode.BAD_FRAME if garbled else ErrorCode.TIMEOUT
            what = "reply that is no valid Modbus frame" if garbled else "no answer"
            # pymodbus closes a TCP link itself after several unanswered requests in a row,
            # and at once after a reply it cannot decode.
            if not client.connected:
                raise NotConnectedError(f"{what}, link closed: {exc}", code) from exc
            raise RequestError(code, f"{request}: {what}") from exc
        except ModbusException as exc:
            raise RequestError(ErrorCode.BAD_REPLY, f"{request}: {exc}") from exc
        except OSError as exc:
            raise NotConnectedError(f"connection lost: {exc}") from exc
        finally:
            if traffic is not None:
                traffic.requests_waiting -= 1
        return check_reply(request, reply)


class ModbusTcpDriver(_ModbusDriver):
    """One Modbus TCP device (or one unit id behind a TCP gateway), on its own connection."""

    def __init__(self, device: ModbusTcpDevice, clock: Callable[[], float] = time.time) -> None:
        super().__init__(device, clock)
        self._tcp = device
        self._connection: AsyncModbusTcpClient | None = None
        self._tcp_traffic: _Traffic | None = None

    def describe(self) -> str:
        return self._describe(f"{self._tcp.host}:{self._tcp.port}")

    def peer_address(self) -> tuple[str, int]:
        """Probed while the device is down (drivers.base.Reachable)."""
        return self._tcp.host, self._tcp.port

    def _client(self) -> Any:
        return self._connection

    async def connect(self) -> None:
        d = self._tcp
        # retries=0 and reconnect_delay=0: the core owns retries, backoff and reconnects.
        traffic = _Traffic()
        client = AsyncModbusTcpClient(
            d.host,
            port=d.port,
            timeout=d.timeout_ms / 1000,
            retries=0,
            reconnect_delay=0,
            trace_pdu=traffic.pdu,
        )
        traffic.watch(client)
        _register_quiet_replies(client)
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise NotConnectedError(f"cannot connect to {d.host}:{d.port}: {exc}") from exc
        if not ok:
            client.close()
            raise NotConnectedError(f"cannot connect to {d.host}:{d.port}")
        self._connection = client
        self._tcp_traffic = traffic

    def _traffic(self) -> _Traffic | None:
        return self._tcp_traffic

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_SERIAL_PARITY = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


class _RtuBus:
    """One RS-485 port, shared by the units on it; pymodbus sends one request at a time."""

    def __init__(self, device: ModbusRtuDevice) -> None:
        self.port = device.port
        self.traffic = _Traffic()
        self.users = 0
        self.client = AsyncModbusSerialClient(
            device.port,
            framer=FramerType.RTU,
            baudrate=device.baudrate,
            bytesize=device.bytesize,
            parity=_SERIAL_PARITY[device.parity.value],
            stopbits=device.stopbits,
            timeout=device.timeout_ms / 1000,
            retries=0,
            reconnect_delay=0,
            trace_pdu=self.traffic.pdu,
        )
        self.traffic.watch(self.client)
        _register_quiet_replies(self.client)


# Buses by (event loop, port): the devices on one port share one client.
@dataclass
class _LoopBuses:
    """The buses of one event loop (keyed by the loop object itself: an id() can be reused by
    a later loop, and an asyncio.Lock must not outlive the loop it is bound to)."""

    by_port: dict[str, _RtuBus] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBuses] = (
    weakref.WeakKeyDictionary()
)


def _loop_buses() -> _LoopBuses:
    loop = asyncio.get_running_loop()
    buses = _loops.get(loop)
    if buses is None:
        buses = _loops[loop] = _LoopBuses()
    return buses


class ModbusRtuDriver(_ModbusDriver):
    """One unit on a Modbus RTU bus; units with the same port share it."""

    def __init__(self, device: ModbusRtuDevice, clock: Callable[[], float] = time.time) -> None:
        super().__init__(device, clock)
        self._rtu = device
        self._bus: _RtuBus | None = None

    def describe(self) -> str:
        d = self._rtu
        return self._describe(
            f"{d.port} {d.baudrate} {d.bytesize}{d.parity.value[0].upper()}{d.stopbits}"
        )

    def _client(self) -> Any:
        return None if self._bus is None else self._bus.client

    def _traffic(self) -> _Traffic | None:
        return None if self._bus is None else self._bus.traffic

    async def connect(self) -> None:
        buses = _loop_buses()
        port = self._rtu.port
        async with buses.lock:
            bus = buses.by_port.get(port)
            if bus is None:
                bus = buses.by_port[port] = _RtuBus(self._rtu)
            if not bus.client.connected:
                try:
                    ok = await bus.client.connect()
                except (OSError, ModbusException) as exc:
                    ok = False
                    error = str(exc)
                else:
                    error = "port did not open"
                if not ok:
                    if bus.users == 0:
                        bus.client.close()
                        del buses.by_port[port]
                    raise NotConnectedError(f"cannot open {self._rtu.port}: {error}")
            bus.users += 1
            self._bus = bus

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is None:
            return
        bus.users -= 1
        if bus.users <= 0:
            bus.client.close()
            _loop_buses().by_port.pop(bus.port, None)
