"""Lines and what they mean, pure (no I/O, no pyserial).

- :class:`LineAssembler`: bytes in, complete lines out. Lines split across reads are joined; a
  line longer than ``max_line_bytes`` is discarded up to its terminator and counted; garbage
  never stops the lines after it.
- :class:`LineParser`: a named-group regex turns a line into one reading per group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from contract.codes import ErrorCode
from contract.records import Reading, Value
from drivers.serial.config import FieldType, LineField, SerialAsciiDevice


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
        # max_line_bytes counts the line without its terminator: an unfinished line may hold
        # up to len(terminator) - 1 bytes more (the CR of a CRLF) and still be a valid one.
        room = self.max_line_bytes + len(self.terminator) - 1
        for index, part in enumerate(parts):
            complete = index < len(parts) - 1
            if not self._discarding:
                self._buffer += part
                if len(self._buffer) > room:
                    # Too long to be a real line (noise, a wrong baud rate): drop it to its end.
                    self.overlong += 1
                    self._buffer.clear()
                    self._discarding = True
            if complete:
                if not self._discarding:
                    line = bytes(self._buffer).strip(b"\r\n")
                    if len(line) > self.max_line_bytes:
                        self.overlong += 1
                    elif line:
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
