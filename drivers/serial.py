"""Serial ASCII instruments and barcode scanners. The only module that imports pyserial.

- :class:`LineAssembler` (pure): bytes in, complete lines out, each stamped when its terminator
  arrived. Lines split across reads are joined; a line longer than ``max_line_bytes`` is
  discarded up to its terminator and counted; garbage never stops the lines after it.
- :class:`SerialLines`: an ``asyncio.Protocol`` on pyserial-asyncio-fast that feeds the
  assembler from ``data_received``, so a line's timestamp is when it arrived, not when the
  poller collected it. No task of its own: the core's poller calls ``read``.
- :class:`SerialAsciiDriver`: listen mode hands over the lines received since the last poll;
  query mode sends ``command`` and waits (``timeout_ms``) for the answer. A named-group regex
  turns a line into tags; a line that does not match is counted as bad input and kept in a
  small ring of recent raw lines shown on /status.
- :class:`BarcodeScannerDriver`: a scan (prefix/suffix stripped) that fully matches
  ``serial_pattern`` becomes a reading of tag ``serial``; one that matches a route becomes a
  reading of that route's tag; anything else is counted and ignored. The station takes its unit
  serial from the scanner through the same ``serial_source`` seam as any device tag.

A port that disappears (a USB adapter pulled) ends the connection: ``read`` raises
NotConnectedError and the poller reopens it with backoff, by the same path (use
/dev/serial/by-id/... names, which come back the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import serial
import serial_asyncio_fast

from collector.config import (
    BarcodeScannerDevice,
    FieldType,
    FlowControl,
    LineField,
    Parity,
    SerialAsciiDevice,
)
from collector.errors import ErrorCode, NotConnectedError
from collector.reading import Reading, Value

log = logging.getLogger(__name__)

RECENT_LINES = 20
_PARITY = {
    Parity.NONE: serial.PARITY_NONE,
    Parity.EVEN: serial.PARITY_EVEN,
    Parity.ODD: serial.PARITY_ODD,
    Parity.MARK: serial.PARITY_MARK,
    Parity.SPACE: serial.PARITY_SPACE,
}


# --------------------------------------------------------------------------- pure logic


@dataclass
class LineAssembler:
    """Splits a byte stream into lines on ``terminator``; bounded memory whatever arrives."""

    terminator: bytes
    max_line_bytes: int
    overlong: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        """Lines completed by ``data``, without their terminators (CR/LF around are stripped)."""
        # Split on the terminator's last byte, so CRLF, LF and stray CRs are all tolerated.
        end = self.terminator[-1:]
        lines: list[bytes] = []
        parts = data.split(end)
        for index, part in enumerate(parts):
            complete = index < len(parts) - 1
            if not self._discarding:
                self._buffer += part
                if len(self._buffer) > self.max_line_bytes:
                    # Too long to be a real line (noise, a wrong baud rate): drop it to its end.
                    self.overlong += 1
                    self._buffer.clear()
                    self._discarding = True
            if complete:
                if not self._discarding:
                    line = bytes(self._buffer).strip(b"\r\n")
                    if line:
                        lines.append(line)
                self._buffer.clear()
                self._discarding = False
        return lines


def convert(text: str, spec: LineField) -> Value:
    """One matched group to a value, per its field spec. Raises ValueError if it does not fit."""
    if spec.type is FieldType.STRING:
        return text
    if spec.type is FieldType.BOOL:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "on", "yes", "ok", "pass"):
            return True
        if lowered in ("0", "false", "off", "no", "nok", "fail"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    number = float(text.replace(" ", "")) if spec.type is FieldType.FLOAT else int(text.strip())
    if spec.scale != 1.0 or spec.offset != 0.0:
        return float(number * spec.scale + spec.offset)
    return number


@dataclass(frozen=True, slots=True)
class LineParser:
    """A named-group pattern: a line becomes one reading per group."""

    pattern: re.Pattern[str]
    fields: dict[str, LineField]

    @classmethod
    def for_device(cls, device: SerialAsciiDevice) -> LineParser:
        return cls(re.compile(device.pattern), dict(device.fields))

    def parse(self, line: str, ts: float) -> list[Reading] | None:
        """Readings of a matching line; None if the line does not match."""
        match = self.pattern.search(line)
        if match is None:
            return None
        readings = []
        for name, text in match.groupdict().items():
            spec = self.fields.get(name, LineField())
            if text is None:
                readings.append(Reading.bad(ts, name, ErrorCode.BAD_INPUT, spec.unit))
                continue
            try:
                value = convert(text, spec)
            except ValueError:
                readings.append(Reading.bad(ts, name, ErrorCode.DECODE, spec.unit))
            else:
                readings.append(Reading(ts, name, value, spec.unit))
        return readings


# --------------------------------------------------------------------------- the port


class SerialLines(asyncio.Protocol):
    """Lines from a serial port, each stamped on arrival; bounded whatever the device sends."""

    MAX_PENDING_LINES = 10_000

    def __init__(self, assembler: LineAssembler, clock: Callable[[], float]) -> None:
        self._assembler = assembler
        self._clock = clock
        self.pending: deque[tuple[float, bytes]] = deque(maxlen=self.MAX_PENDING_LINES)
        self.arrived = asyncio.Event()
        self.lost: Exception | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ts = self._clock()
        for line in self._assembler.feed(data):
            self.pending.append((ts, line))
        if self.pending:
            self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("port closed")
        self.arrived.set()

    def take(self) -> list[tuple[float, bytes]]:
        lines = list(self.pending)
        self.pending.clear()
        self.arrived.clear()
        return lines


class _SerialDriver:
    """Opening, closing and line collection shared by the ASCII and scanner drivers."""

    def __init__(
        self,
        device: SerialAsciiDevice | BarcodeScannerDevice,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._device = device
        self._clock = clock
        self._lines: SerialLines | None = None
        self._assembler = LineAssembler(device.terminator.bytes, device.max_line_bytes)
        self.counts: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=RECENT_LINES)
        self._bad_logged = False

    @property
    def max_read_seconds(self) -> float:
        return self._device.timeout_ms / 1000 + 1.0

    async def connect(self) -> None:
        d = self._device
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await serial_asyncio_fast.create_serial_connection(
                loop,
                lambda: SerialLines(self._assembler, self._clock),
                d.port,
                baudrate=d.baudrate,
                bytesize=d.bytesize,
                parity=_PARITY[d.parity],
                stopbits=d.stopbits,
                rtscts=d.flow_control is FlowControl.RTSCTS,
                xonxoff=d.flow_control is FlowControl.XONXOFF,
            )
        except (OSError, serial.SerialException, ValueError) as exc:
            raise NotConnectedError(f"cannot open {d.port}: {exc}") from exc
        assert isinstance(protocol, SerialLines)
        # connection_made comes a loop turn later; the query mode may write before that.
        protocol.transport = transport
        self._lines = protocol

    async def close(self) -> None:
        if self._lines is not None and self._lines.transport is not None:
            self._lines.transport.close()
        self._lines = None

    def _open_lines(self) -> SerialLines:
        lines = self._lines
        if lines is None:
            raise NotConnectedError("not open")
        if lines.lost is not None:
            raise NotConnectedError(f"port {self._device.port} lost: {lines.lost}")
        return lines

    def _received(self) -> list[tuple[float, str]]:
        lines = self._open_lines().take()
        self.counts["overlong_lines"] = self._assembler.overlong
        return [(ts, raw.decode(self._device.encoding, errors="replace")) for ts, raw in lines]

    def _bad_line(self, text: str) -> None:
        """Count, keep for /status, and log once per run of bad lines (not a flood)."""
        self.counts["bad_input"] += 1
        self.recent.append(text)
        if not self._bad_logged:
            log.warning(
                "device %s: line does not match: %r (further ones counted until a good one)",
                self._device.name,
                text[:80],
            )
            self._bad_logged = True

    def _good_line(self, text: str) -> None:
        self.counts["lines"] += 1
        self.recent.append(text)
        self._bad_logged = False

    def details(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "recent_lines": list(self.recent)}


class SerialAsciiDriver(_SerialDriver):
    def __init__(self, device: SerialAsciiDevice, clock: Callable[[], float] = time.time) -> None:
        super().__init__(device, clock)
        self._ascii = device
        self._parser = LineParser.for_device(device)

    def describe(self) -> str:
        d = self._ascii
        what = f"query {d.command!r}" if d.mode == "query" else "listen"
        return f"serial_ascii {d.port} {d.baudrate} baud, {what}, tags {sorted(d.tag_names)}"

    async def read(self) -> list[Reading]:
        if self._ascii.mode == "query":
            return await self._query()
        readings: list[Reading] = []
        for ts, text in self._received():
            readings.extend(self._parse(ts, text))
        return readings

    async def _query(self) -> list[Reading]:
        d = self._ascii
        lines = self._open_lines()
        lines.take()  # an answer that came too late for the last poll is not this poll's
        assert lines.transport is not None
        assert d.command is not None
        lines.transport.write(d.command.encode(d.encoding) + d.terminator.bytes)
        try:
            async with asyncio.timeout(d.timeout_ms / 1000):
                while not lines.pending and lines.lost is None:
                    await lines.arrived.wait()
                    lines.arrived.clear()
        except TimeoutError:
            self.counts["timeouts"] += 1
            return [
                Reading.bad(self._clock(), name, ErrorCode.TIMEOUT) for name in sorted(d.tag_names)
            ]
        received = self._received()
        return self._parse(*received[0]) if received else []

    def _parse(self, ts: float, text: str) -> list[Reading]:
        readings = self._parser.parse(text, ts)
        if readings is None:
            self._bad_line(text)
            return []
        self._good_line(text)
        return readings


class BarcodeScannerDriver(_SerialDriver):
    def __init__(
        self, device: BarcodeScannerDevice, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(device, clock)
        self._scanner = device
        self._serial = re.compile(device.serial_pattern)
        self._routes = [(r.tag, re.compile(r.pattern)) for r in device.routes]

    def describe(self) -> str:
        d = self._scanner
        return f"barcode_scanner {d.port} {d.baudrate} baud, serial pattern {d.serial_pattern!r}"

    async def read(self) -> list[Reading]:
        readings: list[Reading] = []
        for ts, text in self._received():
            code = self._strip(text.strip())
            tag = self._classify(code)
            if tag is None:
                self._bad_line(text)
                continue
            self._good_line(text)
            readings.append(Reading(ts, tag, code))
        return readings

    def _strip(self, code: str) -> str:
        d = self._scanner
        if d.strip_prefix and code.startswith(d.strip_prefix):
            code = code[len(d.strip_prefix) :]
        if d.strip_suffix and code.endswith(d.strip_suffix):
            code = code[: -len(d.strip_suffix)]
        return code

    def _classify(self, code: str) -> str | None:
        # Routes first: they are the specific codes (a work order) that a loose serial
        # pattern would otherwise take for a unit.
        for tag, pattern in self._routes:
            if pattern.fullmatch(code):
                return tag
        return "serial" if self._serial.fullmatch(code) else None


# --------------------------------------------------------------------------- probe


def probe_device(url: str, query: str | None, pattern: str | None) -> SerialAsciiDevice:
    """A device config from ``serial:///dev/ttyUSB0?baud=9600&parity=even&terminator=crlf``."""
    parts = urlsplit(url)
    if parts.scheme != "serial" or not parts.path:
        raise ValueError(f"expected serial:///dev/PORT?baud=N, got {url!r}")
    params = dict(parse_qsl(parts.query))
    unknown = set(params) - {"baud", "parity", "bytesize", "stopbits", "terminator", "encoding"}
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)}; allowed: baud, parity, "
            "bytesize, stopbits, terminator, encoding"
        )
    spec: dict[str, Any] = {
        "name": "probe",
        "protocol": "serial_ascii",
        "port": parts.path,
        "mode": "query" if query else "listen",
        "command": query,
        "pattern": pattern or r"(?P<line>.*)",
        "timeout_ms": 2000,
        "baudrate": int(params.get("baud", 9600)),
        "parity": params.get("parity", "none"),
        "bytesize": int(params.get("bytesize", 8)),
        "stopbits": int(params.get("stopbits", 1)),
        "terminator": params.get("terminator", "crlf"),
        "encoding": params.get("encoding", "ascii"),
    }
    if pattern is None:
        spec["fields"] = {"line": {"type": "string"}}
    return SerialAsciiDevice.model_validate(spec)


async def probe(device: SerialAsciiDevice, seconds: float, out: Callable[[str], None]) -> int:
    """Show each line as it arrives and what the pattern makes of it, for ``seconds``."""
    driver = SerialAsciiDriver(device)
    await driver.connect()
    parser = LineParser.for_device(device)
    out(
        f"probing {device.port} at {device.baudrate} baud"
        + (f", sending {device.command!r} every second" if device.command else "")
        + f", for {seconds:g} s; Ctrl-C stops"
    )
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        while loop.time() < end:
            lines = driver._open_lines()
            if device.command:
                assert lines.transport is not None
                lines.transport.write(
                    device.command.encode(device.encoding) + device.terminator.bytes
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lines.arrived.wait(), min(1.0, end - loop.time()))
            for ts, text in driver._received():
                readings = parser.parse(text, ts)
                if readings is None:
                    out(f"{text!r}  -> does not match the pattern")
                else:
                    shown = ", ".join(
                        f"{r.tag}={r.value!r}" if r.error is None else f"{r.tag}: {r.error}"
                        for r in readings
                    )
                    out(f"{text!r}  -> {shown}")
            if device.command:
                await asyncio.sleep(max(0.0, min(1.0, end - loop.time())))
    finally:
        await driver.close()
    return 0
