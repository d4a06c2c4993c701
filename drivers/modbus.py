"""Modbus TCP driver. The only module that imports pymodbus.

Three layers, top to bottom:

- pure logic, no I/O: :func:`plan_requests` coalesces a device's tags into as few requests as
  possible (once, at start-up), :func:`decode` / :func:`encode` convert register words;
- :class:`ModbusTcpDriver`: the driver contract (connect / read / close) on pymodbus's async
  client, translating its exceptions and exception replies into :mod:`collector.errors`;
- :class:`SimulatedModbusServer`: a real pymodbus TCP server for the demo, tests and benchmarks.

pymodbus renamed its unit keyword twice (``unit=`` -> ``slave=`` -> ``device_id=``); keeping it
here means API churn touches one file.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from collector.config import (
    TYPE_REGISTERS,
    ByteOrder,
    ModbusRtuDevice,
    ModbusTable,
    ModbusTag,
    ModbusTcpDevice,
    ModbusType,
    WordOrder,
)
from collector.errors import ErrorCode, NotConnectedError, RequestError
from collector.reading import Reading, Value

# pymodbus logs every failed connect and every timeout itself; the collector counts those and
# logs once per episode, so the library's own log would only be a flood.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# Read function codes per table (Modbus Application Protocol V1.1b3, section 6).
FUNCTION_CODE: dict[ModbusTable, int] = {
    ModbusTable.COIL: 1,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}

EXCEPTION_CODES: dict[int, ErrorCode] = {
    1: ErrorCode.ILLEGAL_FUNCTION,
    2: ErrorCode.ILLEGAL_DATA_ADDRESS,
    3: ErrorCode.ILLEGAL_DATA_VALUE,
    4: ErrorCode.DEVICE_FAILURE,
    5: ErrorCode.ACKNOWLEDGE,
    6: ErrorCode.DEVICE_BUSY,
    10: ErrorCode.GATEWAY_PATH_UNAVAILABLE,
    11: ErrorCode.GATEWAY_TARGET_NO_RESPONSE,
}

# --------------------------------------------------------------------------- decoding

_STRUCT: dict[ModbusType, str] = {
    ModbusType.INT16: ">h",
    ModbusType.UINT16: ">H",
    ModbusType.INT32: ">i",
    ModbusType.UINT32: ">I",
    ModbusType.INT64: ">q",
    ModbusType.UINT64: ">Q",
    ModbusType.FLOAT32: ">f",
    ModbusType.FLOAT64: ">d",
}


def _swap_bytes(data: bytes) -> bytes:
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)


def words_to_bytes(words: Sequence[int], byte_order: ByteOrder, word_order: WordOrder) -> bytes:
    """Register words to bytes, most significant first (ABCD order).

    ABCD = big/big, CDAB = big bytes/little words, BADC = little/big, DCBA = little/little.
    """
    ordered = reversed(words) if word_order is WordOrder.LITTLE else words
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    return _swap_bytes(data) if byte_order is ByteOrder.LITTLE else data


def bytes_to_words(data: bytes, byte_order: ByteOrder, word_order: WordOrder) -> list[int]:
    """The inverse of :func:`words_to_bytes`."""
    if byte_order is ByteOrder.LITTLE:
        data = _swap_bytes(data)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if word_order is WordOrder.LITTLE else words


@dataclass(frozen=True, slots=True)
class TagCodec:
    """A tag with its orders resolved against the device defaults."""

    tag: ModbusTag
    byte_order: ByteOrder
    word_order: WordOrder

    @classmethod
    def for_device(cls, tag: ModbusTag, device: ModbusTcpDevice | ModbusRtuDevice) -> TagCodec:
        return cls(tag, tag.byte_order or device.byte_order, tag.word_order or device.word_order)


def decode(codec: TagCodec, words: Sequence[int]) -> Value:
    """Decode a register tag from exactly ``tag.width`` words. Raises ValueError if not finite."""
    tag = codec.tag
    if tag.type is ModbusType.BOOL:
        assert tag.bit is not None
        return bool((words[0] >> tag.bit) & 1)
    if tag.type is ModbusType.STRING:
        # Strings are register order; only the bytes within each register may be swapped.
        raw = words_to_bytes(words, codec.byte_order, WordOrder.BIG)
        return raw.rstrip(b"\x00 ").decode("ascii", errors="replace")
    (raw_value,) = struct.unpack(_STRUCT[tag.type], words_to_bytes(words, *_orders(codec)))
    if isinstance(raw_value, float) and not math.isfinite(raw_value):
        raise ValueError(f"{tag.name}: not a finite number ({raw_value})")
    if tag.scale != 1.0 or tag.offset != 0.0:
        return float(raw_value * tag.scale + tag.offset)
    return raw_value  # type: ignore[no-any-return]


def encode(codec: TagCodec, value: Value) -> list[int]:
    """Encode a value into register words (the inverse of :func:`decode`; for simulators)."""
    tag = codec.tag
    if tag.type is ModbusType.STRING:
        assert tag.count is not None
        raw = str(value).encode("ascii")[: tag.count * 2].ljust(tag.count * 2, b"\x00")
        return bytes_to_words(raw, codec.byte_order, WordOrder.BIG)
    if tag.type is ModbusType.BOOL:
        assert tag.bit is not None
        return [(1 << tag.bit) if value else 0]
    assert isinstance(value, int | float)
    raw_value: float = value
    if tag.scale != 1.0 or tag.offset != 0.0:
        raw_value = (value - tag.offset) / tag.scale
    if tag.type not in (ModbusType.FLOAT32, ModbusType.FLOAT64):
        raw_value = round(raw_value)  # exact for unscaled 64-bit integers, too
    return bytes_to_words(struct.pack(_STRUCT[tag.type], raw_value), *_orders(codec))


def _orders(codec: TagCodec) -> tuple[ByteOrder, WordOrder]:
    return codec.byte_order, codec.word_order


# --------------------------------------------------------------------------- coalescing


# How one tag is taken out of a reply: (name, unit, offset in the reply, width, a fast
# decoder of its single register or bit, or None for the general decode, its codec).
_Step = tuple[str, str | None, int, int, Callable[[int], Value] | None, TagCodec]


def _fast_decoder(codec: TagCodec, bits: bool) -> Callable[[int], Value] | None:
    """A decoder for the common one-register cases, built once per plan: the per-reading work
    of the general path (byte juggling, struct) is most of a poll's CPU."""
    tag = codec.tag
    if bits:
        return bool
    if codec.byte_order is not ByteOrder.BIG:
        return None
    scale, offset = tag.scale, tag.offset
    plain = scale == 1.0 and offset == 0.0
    if tag.type is ModbusType.UINT16:
        return int if plain else (lambda w: float(w * scale + offset))
    if tag.type is ModbusType.INT16:
        if plain:
            return lambda w: w - 0x10000 if w & 0x8000 else w
        return lambda w: float((w - 0x10000 if w & 0x8000 else w) * scale + offset)
    return None


@dataclass(frozen=True, slots=True)
class Request:
    """One read request: a contiguous span of a table covering one or more tags."""

    table: ModbusTable
    address: int
    count: int
    tags: tuple[TagCodec, ...]
    steps: tuple[_Step, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        bits = self.table.is_bit_table
        steps = tuple(
            (
                c.tag.name,
                c.tag.unit,
                c.tag.address - self.address,
                c.tag.width,
                _fast_decoder(c, bits),
                c,
            )
            for c in self.tags
        )
        object.__setattr__(self, "steps", steps)

    def __str__(self) -> str:
        return f"{self.table.value}[{self.address}..{self.address + self.count - 1}]"


def plan_requests(
    codecs: Iterable[TagCodec],
    *,
    max_registers: int = 125,
    max_bits: int = 2000,
    max_gap_registers: int = 16,
    max_gap_bits: int = 64,
) -> list[Request]:
    """Group tags into as few requests as possible.

    Per table, tags sorted by address are merged into the current request while the request
    stays within the size limit and the hole between them is at most the allowed gap (reading
    a few unused registers is far cheaper than another round trip). Overlapping tags share
    registers.
    """
    by_table: dict[ModbusTable, list[TagCodec]] = {}
    for codec in codecs:
        by_table.setdefault(codec.tag.table, []).append(codec)
    requests: list[Request] = []
    for table in ModbusTable:  # a fixed table order keeps plans stable
        members = sorted(by_table.get(table, []), key=lambda c: (c.tag.address, -c.tag.width))
        limit = max_bits if table.is_bit_table else max_registers
        gap = max_gap_bits if table.is_bit_table else max_gap_registers
        start = end = -1
        group: list[TagCodec] = []
        for codec in members:
            lo, hi = codec.tag.address, codec.tag.address + codec.tag.width
            if group and lo - end <= gap and max(end, hi) - start <= limit:
                end = max(end, hi)
                group.append(codec)
                continue
            if group:
                requests.append(Request(table, start, end - start, tuple(group)))
            start, end, group = lo, hi, [codec]
        if group:
            requests.append(Request(table, start, end - start, tuple(group)))
    return requests


def plan_for_device(device: ModbusTcpDevice | ModbusRtuDevice) -> list[Request]:
    return plan_requests(
        (TagCodec.for_device(tag, device) for tag in device.tags),
        max_registers=device.workarounds.max_registers_per_request,
        max_bits=device.workarounds.max_bits_per_request,
        max_gap_registers=device.max_gap_registers,
        max_gap_bits=device.max_gap_bits,
    )


def readings_from_reply(
    request: Request, values: Sequence[int] | Sequence[bool], ts: float
) -> list[Reading]:
    """Decode the tags of a request from its reply values (words or bits)."""
    out: list[Reading] = []
    for name, unit, offset, width, fast, codec in request.steps:
        try:
            if fast is not None:
                value = fast(values[offset])
            else:
                value = decode(codec, [int(v) for v in values[offset : offset + width]])
        except ValueError:
            out.append(Reading.bad(ts, name, ErrorCode.DECODE, unit))
        else:
            out.append(Reading(ts, name, value, unit))
    return out


# --------------------------------------------------------------------------- the driver


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

    @property
    def plan(self) -> list[Request]:
        return list(self._plan)

    @property
    def max_read_seconds(self) -> float:
        # Each request waits at most timeout_ms; one more timeout is margin for the event loop.
        return self._device.timeout_ms / 1000 * (len(self._plan) + 1)

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

    def _garbled_since(self, mark: int) -> bool:
        """Whether bytes arrived since ``mark`` that made no valid frame (RTU CRC errors)."""
        return False

    def _received_mark(self) -> int:
        return 0

    async def read(self) -> list[Reading]:
        readings: list[Reading] = []
        timeouts = 0
        for request in self._plan:
            mark = self._received_mark()
            try:
                values = await self._execute(request)
            except RequestError as exc:
                code = exc.code
                if code is ErrorCode.TIMEOUT:
                    timeouts += 1
                    if self._garbled_since(mark):
                        code = ErrorCode.BAD_FRAME
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

    async def _execute(self, request: Request) -> Sequence[int] | Sequence[bool]:
        client = self._client()
        if client is None or not client.connected:
            raise NotConnectedError("not connected")
        read: Callable[..., Any] = {
            ModbusTable.COIL: client.read_coils,
            ModbusTable.DISCRETE_INPUT: client.read_discrete_inputs,
            ModbusTable.HOLDING_REGISTER: client.read_holding_registers,
            ModbusTable.INPUT_REGISTER: client.read_input_registers,
        }[request.table]
        try:
            reply = await read(request.address, count=request.count, device_id=self._device.unit_id)
        except ConnectionException as exc:
            raise NotConnectedError(f"connection lost: {exc}") from exc
        except ModbusIOException as exc:
            # pymodbus closes a TCP link itself after several unanswered requests in a row.
            if not client.connected:
                raise NotConnectedError(
                    f"no answer, link closed: {exc}", ErrorCode.TIMEOUT
                ) from exc
            raise RequestError(ErrorCode.TIMEOUT, f"{request}: no answer") from exc
        except ModbusException as exc:
            raise RequestError(ErrorCode.BAD_REPLY, f"{request}: {exc}") from exc
        except OSError as exc:
            raise NotConnectedError(f"connection lost: {exc}") from exc
        return check_reply(request, reply)


class ModbusTcpDriver(_ModbusDriver):
    """One Modbus TCP device (or one unit id behind a TCP gateway), on its own connection."""

    def __init__(self, device: ModbusTcpDevice, clock: Callable[[], float] = time.time) -> None:
        super().__init__(device, clock)
        self._tcp = device
        self._connection: AsyncModbusTcpClient | None = None

    def describe(self) -> str:
        return self._describe(f"{self._tcp.host}:{self._tcp.port}")

    def _client(self) -> Any:
        return self._connection

    async def connect(self) -> None:
        d = self._tcp
        # retries=0 and reconnect_delay=0: the core owns retries, backoff and reconnects.
        client = AsyncModbusTcpClient(
            d.host, port=d.port, timeout=d.timeout_ms / 1000, retries=0, reconnect_delay=0
        )
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise NotConnectedError(f"cannot connect to {d.host}:{d.port}: {exc}") from exc
        if not ok:
            client.close()
            raise NotConnectedError(f"cannot connect to {d.host}:{d.port}")
        self._connection = client

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


_SERIAL_PARITY = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


class _RtuBus:
    """One RS-485 port, shared by the units on it; pymodbus sends one request at a time."""

    def __init__(self, device: ModbusRtuDevice) -> None:
        self.port = device.port
        self.received_bytes = 0
        self.frames = 0
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
            trace_packet=self._trace_packet,
            trace_pdu=self._trace_pdu,
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.received_bytes += len(data)
        return data

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if not sending:
            self.frames += 1
        return pdu


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
        self._frames_at_mark = 0

    def describe(self) -> str:
        d = self._rtu
        return self._describe(
            f"{d.port} {d.baudrate} {d.bytesize}{d.parity.value[0].upper()}{d.stopbits}"
        )

    def _client(self) -> Any:
        return None if self._bus is None else self._bus.client

    def _received_mark(self) -> int:
        assert self._bus is not None
        self._frames_at_mark = self._bus.frames
        return self._bus.received_bytes

    def _garbled_since(self, mark: int) -> bool:
        # Bytes arrived but no frame did: the reply failed its CRC (noise, a wrong baud rate,
        # two units answering at once).
        bus = self._bus
        return bus is not None and bus.received_bytes > mark and bus.frames == self._frames_at_mark

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


def check_reply(request: Request, reply: Any) -> Sequence[int] | Sequence[bool]:
    """Translate an exception reply and make sure the reply answers *this* request."""
    expected = FUNCTION_CODE[request.table]
    if reply.isError():
        if reply.function_code != expected | 0x80:
            raise RequestError(ErrorCode.BAD_REPLY, f"{request}: reply to another function")
        code = EXCEPTION_CODES.get(reply.exception_code, ErrorCode.EXCEPTION_OTHER)
        raise RequestError(code, f"{request}: exception {reply.exception_code}")
    if reply.function_code != expected:
        raise RequestError(
            ErrorCode.BAD_REPLY, f"{request}: function {reply.function_code}, expected {expected}"
        )
    if request.table.is_bit_table:
        bits: list[bool] = reply.bits
        # Bits come padded to whole bytes.
        if not request.count <= len(bits) < request.count + 8:
            raise RequestError(ErrorCode.BAD_REPLY, f"{request}: {len(bits)} bits in reply")
        return bits
    registers: list[int] = reply.registers
    if len(registers) != request.count:
        raise RequestError(
            ErrorCode.BAD_REPLY, f"{request}: {len(registers)} registers, expected {request.count}"
        )
    return registers


# --------------------------------------------------------------------------- technician tools

GATEWAY_NO_TARGET = (ErrorCode.GATEWAY_PATH_UNAVAILABLE, ErrorCode.GATEWAY_TARGET_NO_RESPONSE)


def tcp_device_from_url(url: str, timeout_ms: int = 1000) -> ModbusTcpDevice:
    """A device config from ``modbus://HOST:PORT?unit=1`` (port 502 when omitted)."""
    parts = urlsplit(url)
    if parts.scheme != "modbus" or not parts.hostname:
        raise ValueError(f"expected modbus://HOST:PORT?unit=N, got {url!r}")
    params = dict(parse_qsl(parts.query))
    unknown = set(params) - {"unit"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; allowed: unit")
    return ModbusTcpDevice.model_validate(
        {
            "name": "probe",
            "protocol": "modbus_tcp",
            "host": parts.hostname,
            "port": parts.port or 502,
            "unit_id": int(params.get("unit", 1)),
            "timeout_ms": timeout_ms,
            "tags": [{"name": "x", "table": "coil", "address": 0, "type": "bool"}],
        }
    )


async def read_raw(
    device: ModbusTcpDevice, table: ModbusTable, address: int, count: int
) -> list[int] | list[bool]:
    """One read, as the device answers it (raises NotConnectedError or RequestError)."""
    driver = ModbusTcpDriver(device)
    try:
        await driver.connect()
        values = await driver._execute(Request(table, address, count, ()))
    finally:
        await driver.close()
    return list(values)


_ORDERS = (
    ("ABCD", ByteOrder.BIG, WordOrder.BIG),
    ("CDAB", ByteOrder.BIG, WordOrder.LITTLE),
    ("BADC", ByteOrder.LITTLE, WordOrder.BIG),
    ("DCBA", ByteOrder.LITTLE, WordOrder.LITTLE),
)


def interpretations(words: Sequence[int], address: int = 0) -> list[tuple[str, list[str]]]:
    """The words starting at ``address`` read as every type, in each byte/word order
    (columns ABCD, CDAB, BADC, DCBA; 16-bit types only have a byte order)."""
    rows: list[tuple[str, list[str]]] = []
    for type_ in ModbusType:
        if type_ in (ModbusType.BOOL, ModbusType.STRING):
            continue
        width = TYPE_REGISTERS[type_]
        if width > len(words):
            continue
        tag = ModbusTag(name="x", table=ModbusTable.HOLDING_REGISTER, address=address, type=type_)
        cells = []
        for _, byte_order, word_order in _ORDERS:
            if width == 1 and word_order is WordOrder.LITTLE:
                cells.append("=")  # a single register has no word order
                continue
            try:
                value = decode(TagCodec(tag, byte_order, word_order), words[:width])
            except ValueError:
                value = "not finite"
            cells.append(f"{value:.6g}" if isinstance(value, float) else str(value))
        rows.append((type_.value, cells))
    for label, byte_order in (
        ("string", ByteOrder.BIG),
        ("string (bytes swapped)", ByteOrder.LITTLE),
    ):
        tag = ModbusTag(
            name="x",
            table=ModbusTable.HOLDING_REGISTER,
            address=address,
            type=ModbusType.STRING,
            count=len(words),
        )
        rows.append((label, [repr(decode(TagCodec(tag, byte_order, WordOrder.BIG), words))]))
    return rows


async def scan_units(
    device: ModbusTcpDevice,
    units: Iterable[int],
    table: ModbusTable = ModbusTable.HOLDING_REGISTER,
    address: int = 0,
) -> list[tuple[int, str]]:
    """Which unit ids behind ``device``'s address answer a 1-register read: (unit, what it
    said). A reply of any kind, an exception response included, means the unit is there; no
    answer, or a gateway's "target failed to respond", means it is not. Bounded by the unit
    range and the device's timeout per unit."""
    found: list[tuple[int, str]] = []
    driver = ModbusTcpDriver(device)
    try:
        for unit in units:
            if driver._client() is None or not driver._client().connected:
                await driver.close()
                await driver.connect()  # pymodbus drops the link after unanswered requests
            driver._device = device.model_copy(update={"unit_id": unit})
            try:
                values = await driver._execute(Request(table, address, 1, ()))
            except RequestError as exc:
                if exc.code is ErrorCode.TIMEOUT or exc.code in GATEWAY_NO_TARGET:
                    continue
                found.append((unit, f"answers with an exception: {exc.code.value}"))
            except NotConnectedError:
                continue
            else:
                found.append((unit, f"{table.value}[{address}] = {values[0]}"))
    finally:
        await driver.close()
    return found


# --------------------------------------------------------------------------- simulator


class SimulatedModbusServer:
    """A real pymodbus TCP server with the four tables, for the demo, tests and benchmarks.

    Every unit id gets ``size`` registers in each register table and ``size`` bits in each bit
    table, all starting at address 0. Values are set with :meth:`set_registers` and
    :meth:`set_bits`.
    """

    def __init__(
        self,
        unit_ids: Iterable[int] = (1,),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        size: int = 1000,
        serial_port: str | None = None,
        baudrate: int = 19200,
    ) -> None:
        self._host, self._requested_port, self._size = host, port, size
        self._unit_ids = tuple(unit_ids)
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port = port
        # With serial_port: Modbus RTU on that serial line (8N1: Linux pseudo-terminals refuse
        # some parity settings) instead of TCP; units not in unit_ids stay silent, as a dead
        # unit on an RS-485 bus does.
        self._serial_port, self._baudrate = serial_port, baudrate

    def _device(self, unit_id: int) -> SimDevice:
        bit_words = self._size // 16 + 1

        def bits() -> list[SimData]:
            return [SimData(0, count=bit_words, values=0, datatype=DataType.BITS)]

        def registers() -> list[SimData]:
            return [SimData(0, count=self._size, values=0, datatype=DataType.REGISTERS)]

        return SimDevice(id=unit_id, simdata=(bits(), bits(), registers(), registers()))

    async def start(self) -> None:
        devices = [self._device(u) for u in self._unit_ids]
        if self._serial_port is not None:
            rtu = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self._serial_port,
                baudrate=self._baudrate,
                parity="N",
                ignore_missing_devices=True,
            )
            await rtu.serve_forever(background=True)
            self._server = rtu
            return
        server = ModbusTcpServer(devices, address=(self._host, self._requested_port))
        await server.serve_forever(background=True)
        self._server = server
        listener: Any = server.transport  # an asyncio.Server once listening
        self.port = int(listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def set_registers(
        self, unit_id: int, table: ModbusTable, address: int, words: Sequence[int]
    ) -> None:
        assert self._server is not None
        assert not table.is_bit_table
        await self._server.context.async_setValues(
            unit_id, FUNCTION_CODE[table], address, list(words)
        )

    async def set_bits(
        self, unit_id: int, table: ModbusTable, address: int, bits: Sequence[bool]
    ) -> None:
        assert self._server is not None
        assert table.is_bit_table
        await self._server.context.async_setValues(
            unit_id, FUNCTION_CODE[table], address, list(bits)
        )

    async def set_value(self, unit_id: int, codec: TagCodec, value: Value) -> None:
        """Encode a value the way ``codec`` decodes it, and store it."""
        tag = codec.tag
        if tag.table.is_bit_table:
            await self.set_bits(unit_id, tag.table, tag.address, [bool(value)])
        else:
            await self.set_registers(unit_id, tag.table, tag.address, encode(codec, value))
