"""Serial ASCII instruments and barcode scanners. The only module that imports pyserial.

The line logic is pure (drivers.serial.lines); here:

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
from typing import Any

import serial
import serial_asyncio_fast

from contract.codes import ErrorCode
from contract.records import Reading
from contract.text import escaped, serial_problem
from drivers.base import NotConnectedError
from drivers.serial.config import BarcodeScannerDevice, FlowControl, Parity, SerialAsciiDevice
from drivers.serial.lines import LineAssembler, LineParser

log = logging.getLogger(__name__)

RECENT_LINES = 20
_PARITY = {
    Parity.NONE: serial.PARITY_NONE,
    Parity.EVEN: serial.PARITY_EVEN,
    Parity.ODD: serial.PARITY_ODD,
    Parity.MARK: serial.PARITY_MARK,
    Parity.SPACE: serial.PARITY_SPACE,
}


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
        #: Lines pushed out by newer ones while the bound was full (a burst between polls).
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        ts = self._clock()
        for line in self._assembler.feed(data):
            if len(self.pending) == self.MAX_PENDING_LINES:
                self.dropped += 1  # the deque drops the oldest: counted, not silent
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
        # Input errors not yet handed to the core (CountsInputErrors), by code.
        self._input_errors: Counter[str] = Counter()
        # Lines dropped by the connections before the current one (each reconnect starts at 0).
        self._dropped_before = 0

    def take_input_errors(self) -> Counter[str]:
        taken, self._input_errors = self._input_errors, Counter()
        return taken

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
        if self._lines is not None:
            self._dropped_before += self._lines.dropped
            if self._lines.transport is not None:
                self._lines.transport.close()
        self._lines = None

    async def lines(self, wait_s: float, send: str | None = None) -> list[tuple[float, str]]:
        """The lines received so far or within ``wait_s``, after sending ``send`` (with the line
        end) if given: one exchange, for the probe tool (drivers.serial.tools). Raises
        NotConnectedError when the port is gone."""
        lines = self._open_lines()
        if send is not None:
            assert lines.transport is not None
            d = self._device
            lines.transport.write(send.encode(d.encoding) + d.terminator.bytes)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lines.arrived.wait(), wait_s)
        return self._received()

    def _open_lines(self) -> SerialLines:
        lines = self._lines
        if lines is None:
            raise NotConnectedError("not open")
        if lines.lost is not None:
            raise NotConnectedError(f"port {self._device.port} lost: {lines.lost}")
        return lines

    def _received(self) -> list[tuple[float, str]]:
        source = self._open_lines()
        lines = source.take()
        for code, now in (
            (ErrorCode.OVERLONG_LINES, self._assembler.overlong),
            (ErrorCode.DROPPED_LINES, self._dropped_before + source.dropped),
        ):
            if now != self.counts[code.value]:
                self._input_errors[code.value] += now - self.counts[code.value]
                self.counts[code.value] = now
        return [(ts, raw.decode(self._device.encoding, errors="replace")) for ts, raw in lines]

    def _bad_line(self, text: str) -> None:
        """Count, keep for /status, and log once per run of bad lines (not a flood)."""
        self.counts["bad_input"] += 1
        self._input_errors[ErrorCode.BAD_INPUT.value] += 1
        self.recent.append(text)
        if not self._bad_logged:
            log.warning(
                "device %s: line does not match: %s (further ones counted until a good one)",
                self._device.name,
                escaped(text),
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
            if tag == "serial" and serial_problem(code) is not None:
                tag = None  # a pattern loose enough to take line noise: still never a unit
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
